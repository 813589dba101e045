package main

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// runAEActivity produces one or more events of each of the 17 seed-000 event
// types on testdata/auction-excellence/schema.sql, one statement per
// transaction.
var runAEActivity = []string{
	`INSERT INTO auctions (id, name) VALUES ('a0000000-0000-4000-8000-000000000001', 'Spring sale')`,
	`INSERT INTO members (id, auction_id, email, role) VALUES ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'olga@example.com', 'owner')`,
	`UPDATE members SET accepted_at = now(), user_id = 'c0000000-0000-4000-8000-000000000001', display_name = 'Olga' WHERE id = 'b0000000-0000-4000-8000-000000000001'`,
	`INSERT INTO members (id, auction_id, email, invited_by) VALUES ('b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'carl@example.com', 'b0000000-0000-4000-8000-000000000001')`,
	`UPDATE members SET role = 'inspector' WHERE id = 'b0000000-0000-4000-8000-000000000002'`,
	`INSERT INTO lot_submissions (id, auction_id, member_id, lot_number, item_count) VALUES ('d0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000001', 7, 12)`,
	`UPDATE lot_submissions SET item_count = 13, updated_at = now() WHERE id = 'd0000000-0000-4000-8000-000000000001'`,
	`INSERT INTO inspections (id, auction_id, submission_id, inspector_id, grade) VALUES ('e0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002', 'B')`,
	`INSERT INTO inspection_defects (id, auction_id, inspection_id, kind, severity, details) VALUES ('f0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'e0000000-0000-4000-8000-000000000001', 'scratch', 'minor', '{"photos": 2}')`,
	`INSERT INTO problem_reports (id, auction_id, reported_by, title) VALUES ('10000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000001', 'Lot 7 count is off')`,
	`UPDATE problem_reports SET status = 'in_progress' WHERE id = '10000000-0000-4000-8000-000000000001'`,
	`UPDATE problem_reports SET assignee_id = 'b0000000-0000-4000-8000-000000000002' WHERE id = '10000000-0000-4000-8000-000000000001'`,
	`INSERT INTO problem_actions (id, auction_id, problem_id, description) VALUES ('20000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001', 'Recount lot 7')`,
	`UPDATE problem_actions SET completed_at = now(), completed_by = 'b0000000-0000-4000-8000-000000000002' WHERE id = '20000000-0000-4000-8000-000000000001'`,
	`INSERT INTO channels (id, auction_id, name) VALUES ('30000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'floor')`,
	`INSERT INTO messages (id, auction_id, channel_id, author_id, body) VALUES ('40000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', '30000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000001', 'hello')`,
	`UPDATE messages SET body = 'hello all', edited_at = now() WHERE id = '40000000-0000-4000-8000-000000000001'`,
	`UPDATE messages SET deleted_at = now() WHERE id = '40000000-0000-4000-8000-000000000001'`,
	`UPDATE channels SET archived = true, archived_at = now() WHERE id = '30000000-0000-4000-8000-000000000001'`,
	`UPDATE members SET removed_at = now(), removed_by = 'b0000000-0000-4000-8000-000000000001' WHERE id = 'b0000000-0000-4000-8000-000000000002'`,
}

var runAEWant = map[string]int{
	"member.invited": 2, "member.joined": 1, "member.role_changed": 1, "member.removed": 1,
	"submission.created": 1, "submission.updated": 1,
	"inspection.created": 1, "inspection.defect_added": 1,
	"problem.created": 1, "problem.status_changed": 1, "problem.assigned": 1, "problem.action_completed": 1,
	"channel.created": 1, "channel.archived": 1,
	"message.created": 1, "message.edited": 1, "message.deleted": 1,
}

func runReadFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var runISOMillis = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// Auction Excellence end to end: SQL on the sample database → every seed-000
// event type arrives signed (verified by the Standard Webhooks library in
// the receiver) with the seed's body and headers; a graceful stop exits nil
// with the slot confirmed up to the store's cursor.
func TestRunEndToEndAuctionExcellence(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, string(runReadFile(t, "../../testdata/auction-excellence/schema.sql")))
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("ops", rc.URL, runSecret)}
	file, cfg := runConfig(t, runReadFile(t, "../../testdata/auction-excellence/walhook.yaml"), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return regexp.MustCompile(`api http://127\.0\.0\.1:\d+`).MatchString(p.stdout.String()) }, p.diag)
	for _, line := range []string{"slot " + db.slot + ",", "publication walhook,", "store schema walhook,"} {
		if !regexp.MustCompile(regexp.QuoteMeta(line)).MatchString(p.stdout.String()) {
			t.Errorf("startup line %q lacks %q", p.stdout.String(), line)
		}
	}
	for _, sql := range runAEActivity {
		db.exec(t, sql)
	}
	want := 0
	for _, n := range runAEWant {
		want += n
	}
	runWaitFor(t, 30*time.Second, "every event", func() bool { return rc.Unique() >= want }, p.diag)
	if got := rc.Counts(); !runCountsEqual(got, runAEWant) {
		t.Errorf("events by type = %v, want %v", got, runAEWant)
	}
	if rc.Duplicates() != 0 || rc.Rejected() != 0 {
		t.Errorf("duplicates %d, rejected %d; want 0, 0", rc.Duplicates(), rc.Rejected())
	}
	for id, body := range rc.Bodies() {
		h := rc.header(id)
		if got := runBodyKeys(t, body); !slices.Equal(got, []string{"event", "timestamp", "webhook_id", "auction_id", "data"}) {
			t.Errorf("body keys %v, want seed 000's {event, timestamp, webhook_id, auction_id, data}", got)
		}
		b := runBody(t, body)
		runCheckHeaders(t, h, id, b["event"])
		if b["webhook_id"] != id {
			t.Errorf("body webhook_id %v, header X-Webhook-ID %s", b["webhook_id"], id)
		}
		if ts, _ := b["timestamp"].(string); !runISOMillis.MatchString(ts) {
			t.Errorf("timestamp %q is not ISO 8601 UTC with milliseconds", ts)
		}
		if b["auction_id"] != "a0000000-0000-4000-8000-000000000001" {
			t.Errorf("%v: auction_id %v", b["event"], b["auction_id"])
		}
		if got := h.Get("User-Agent"); got != "AuctionExcellence-Webhook/1.0" {
			t.Errorf("User-Agent %q, want the seed config's AuctionExcellence-Webhook/1.0", got)
		}
		data, _ := b["data"].(map[string]any)
		switch b["event"] {
		case "problem.status_changed":
			if data["previous_status"] != "open" || data["status"] != "in_progress" {
				t.Errorf("problem.status_changed data %v", data)
			}
		case "submission.updated":
			if data["previous_item_count"] != json.Number("12") || data["item_count"] != json.Number("13") {
				t.Errorf("submission.updated data %v", data)
			}
		}
	}

	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	// Outcomes are counted once recorded, which may follow the receiver's
	// answer by a moment: the page is read again until it holds them (a
	// guard against hanging, not a timing assertion).
	wantMetrics := []string{"walhook_slot_leader 1", "walhook_slot_retained_wal_bytes", "walhook_delivery_attempts_total", "walhook_append_events",
		"walhook_cpu_yielding 0", "walhook_intake_deferred 0", "walhook_rule_table_problems 0"}
	var metrics string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		metrics = runMetrics(t, base)
		if !strings.Contains(metrics, `walhook_delivery_attempts_total{`) && time.Now().Before(deadline) {
			continue
		}
		break
	}
	for _, m := range wantMetrics {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	if err := p.stop(t); err != nil {
		t.Fatalf("graceful stop: Run = %v, want nil", err)
	}
	if logs := p.stdout.String() + p.stderr.String(); strings.Contains(logs, runDSNPassword) {
		t.Errorf("the DSN's password appears in walhook's output")
	}
	cur, slot := db.cursor(t), db.slotLSN(t)
	if cur == 0 || slot != cur {
		t.Errorf("after a graceful stop the slot's confirmed_flush_lsn is %s, the store cursor %s: want them equal", slot, cur)
	}
}

// SNS Auctions end to end: the six seed-004 events in the sns envelope.
func TestRunEndToEndSNSAuctions(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, string(runReadFile(t, "../../testdata/sns-auctions/schema.sql")))
	rc := newRunReceiver(t, runSecret2, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("indexer", rc.URL, runSecret2, "auction.*")}
	file, cfg := runConfig(t, runReadFile(t, "../../testdata/sns-auctions/walhook.yaml"), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	for _, sql := range []string{
		`INSERT INTO auctions (id, domain, seller, start_price, reserve_price, starts_at, ends_at) VALUES
		   ('auction_1', 'alpha.sol', 'SeLLer1', 1, 5, now(), now() + interval '1 hour'),
		   ('auction_2', 'beta.sol', 'SeLLer2', 1, 50, now(), now() + interval '1 hour'),
		   ('auction_3', 'gamma.sol', 'SeLLer3', 1, 5, now(), now() + interval '1 hour')`,
		`INSERT INTO bids (id, auction_id, domain, bidder, amount) VALUES ('50000000-0000-4000-8000-000000000001', 'auction_1', 'alpha.sol', 'BiDDer1', 7.5)`,
		`UPDATE auctions SET ends_at = ends_at + interval '5 minutes', extension_count = 1 WHERE id = 'auction_1'`,
		`UPDATE auctions SET status = 'settled', winner = 'BiDDer1', final_price = 7.5, settled_at = now() WHERE id = 'auction_1'`,
		`UPDATE auctions SET status = 'settled', final_price = 10, settled_at = now() WHERE id = 'auction_2'`,
		`UPDATE auctions SET status = 'cancelled', cancelled_at = now(), cancel_reason = 'seller request' WHERE id = 'auction_3'`,
	} {
		db.exec(t, sql)
	}
	want := map[string]int{"auction.created": 3, "auction.bid": 1, "auction.bid.extended": 1,
		"auction.settled": 1, "auction.settled_unsold": 1, "auction.cancelled": 1}
	runWaitFor(t, 30*time.Second, "every event", func() bool { return rc.Unique() >= 8 }, p.diag)
	if got := rc.Counts(); !runCountsEqual(got, want) {
		t.Errorf("events by type = %v, want %v", got, want)
	}
	evtID := regexp.MustCompile(`^evt_[0-9a-f]{24}$`)
	for id, body := range rc.Bodies() {
		h := rc.header(id)
		if got := runBodyKeys(t, body); !slices.Equal(got, []string{"event", "auctionId", "domain", "data", "timestamp", "id"}) {
			t.Errorf("body keys %v, want seed 004's {event, auctionId, domain, data, timestamp, id}", got)
		}
		b := runBody(t, body)
		runCheckHeaders(t, h, id, b["event"])
		if b["id"] != id || !evtID.MatchString(id) {
			t.Errorf("body id %v, header X-Webhook-ID %s, want equal evt_…", b["id"], id)
		}
		if _, err := b["timestamp"].(json.Number).Int64(); err != nil {
			t.Errorf("timestamp %v is not unix seconds", b["timestamp"])
		}
		if got := h.Get("User-Agent"); got != "walhook/"+Version {
			t.Errorf("User-Agent %q, want walhook/%s", got, Version)
		}
		if b["event"] == "auction.settled" {
			data, _ := b["data"].(map[string]any)
			if b["auctionId"] != "auction_1" || b["domain"] != "alpha.sol" || data["winner"] != "BiDDer1" {
				t.Errorf("auction.settled: %s", body)
			}
		}
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("graceful stop: Run = %v, want nil", err)
	}
}
