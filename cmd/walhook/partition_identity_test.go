package main

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// A list-partitioned table with a partition that is partitioned itself,
// so leaves sit at two depths.
const identBidSchema = `CREATE TABLE bid (id bigint NOT NULL, lot int NOT NULL, amount int NOT NULL DEFAULT 0, PRIMARY KEY (id, lot)) PARTITION BY LIST (lot);
	CREATE TABLE bid_a PARTITION OF bid FOR VALUES IN (1);
	CREATE TABLE bid_b PARTITION OF bid FOR VALUES IN (2) PARTITION BY RANGE (id);
	CREATE TABLE bid_b_lo PARTITION OF bid_b FOR VALUES FROM (MINVALUE) TO (MAXVALUE);`

// What PostgreSQL 15 does with REPLICA IDENTITY on a partitioned table,
// which check and setup --replica-identity rely on: ALTER TABLE on the
// partitioned table sets its own pg_class.relreplident only, neither its
// partitions' nor those of partitions created or attached later; and
// pgoutput, also when it publishes via the root, takes an UPDATE's old
// row from the replica identity of the leaf partition the row is in.
func TestPartitionedReplicaIdentityIsPerLeaf(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newRunDB(t, identBidSchema+`
		ALTER TABLE bid REPLICA IDENTITY FULL;
		CREATE TABLE bid_c PARTITION OF bid FOR VALUES IN (3);
		CREATE TABLE bid_d (LIKE bid INCLUDING ALL);
		ALTER TABLE bid ATTACH PARTITION bid_d FOR VALUES IN (4);
		CREATE PUBLICATION ident FOR TABLE bid WITH (publish_via_partition_root = true);`)
	idents := map[string]string{}
	rows, err := db.pool.Query(ctx, `SELECT relname::text, relreplident::text FROM pg_class WHERE relname LIKE 'bid%' AND relkind IN ('r', 'p')`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name, ident string
		if err := rows.Scan(&name, &ident); err != nil {
			t.Fatal(err)
		}
		idents[name] = ident
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	want := map[string]string{"bid": "f", "bid_a": "d", "bid_b": "d", "bid_b_lo": "d", "bid_c": "d", "bid_d": "d"}
	for name, w := range want {
		if idents[name] != w {
			t.Errorf("%s: relreplident %q, want %q (ALTER TABLE on the partitioned table only)", name, idents[name], w)
		}
	}

	// pgoutput's Update message: 'U', the relation's OID (4 bytes), then
	// 'O' before an old row sent whole (FULL), 'K' before an old key, or
	// 'N' straight away when no old row is sent.
	slot := db.slot + "_ident"
	db.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	t.Cleanup(func() { db.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot) })
	db.exec(t, `INSERT INTO bid (id, lot) VALUES (1, 1), (2, 2)`)
	db.exec(t, `UPDATE bid SET amount = 10`)
	db.exec(t, `ALTER TABLE bid_a REPLICA IDENTITY FULL`)
	db.exec(t, `UPDATE bid SET amount = 20`)
	var got []string
	rows, err = db.pool.Query(ctx, `
		SELECT chr(get_byte(data, 5)), (get_byte(data, 1)::int8 << 24 | get_byte(data, 2) << 16 | get_byte(data, 3) << 8 | get_byte(data, 4)) = 'bid'::regclass::oid::int8
		FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', 'ident')
		WHERE get_byte(data, 0) = ascii('U')`, slot)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var kind string
		var asRoot bool
		if err := rows.Scan(&kind, &asRoot); err != nil {
			t.Fatal(err)
		}
		if !asRoot {
			t.Error("an update arrived under a partition's OID, not bid's")
		}
		got = append(got, kind)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	// Updates in order: bid_a, bid_b_lo (both DEFAULT: no old row), then
	// bid_a FULL, bid_b_lo still DEFAULT.
	if want := []string{"N", "N", "O", "N"}; !slices.Equal(got, want) {
		t.Errorf("old-row markers of the updates %q, want %q", got, want)
	}
}

const identBidConfig = `
source:
  dsn: set-by-test
events:
  - event: bid.raised
    table: public.bid
    operations: [update]
    changed: [amount]
    data:
      - id
      - lot
      - previous_amount: old.amount
      - amount: new.amount
`

// The review's case: a changed: rule on a partitioned table whose own
// REPLICA IDENTITY is FULL, as the fix check used to print left it, while
// its leaf partitions are DEFAULT and send no old row. check names the
// leaves and the statements, run refuses to start, setup
// --replica-identity sets FULL on every leaf, and updates in both
// partitions are delivered with their old values. A partition created
// afterwards is DEFAULT again, and check says so.
func TestPartitionedReplicaIdentityCheckSetupRun(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, identBidSchema+`ALTER TABLE bid REPLICA IDENTITY FULL;`)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, _ := runConfig(t, []byte(identBidConfig), s)

	out, _, code := pubCLI(t, "setup", "--config", file)
	if code != 0 {
		t.Fatalf("setup exit %d", code)
	}
	ckWantLines(t, out, `warn: rules read old values of public\.bid, whose REPLICA IDENTITY does not send them; .*walhook setup --replica-identity`)
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`ok    table public\.bid: readable, 3 columns, REPLICA IDENTITY FULL; partitions not FULL: public\.bid_a DEFAULT, public\.bid_b_lo DEFAULT \(old key: id, lot\)$`,
		`FAIL  rule: .*event bid\.raised: reads old values \(changed: amount, data: amount\) but public\.bid has REPLICA IDENTITY DEFAULT, which does not send them \(its partitions public\.bid_a DEFAULT, public\.bid_b_lo DEFAULT: PostgreSQL sends a partitioned table's old rows as the partition the row is in has its REPLICA IDENTITY, .*\) — fix: ALTER TABLE public\.bid_a REPLICA IDENTITY FULL; ALTER TABLE public\.bid_b_lo REPLICA IDENTITY FULL; \(or walhook setup --replica-identity\)$`,
	)
	_, errOut, code := pubCLI(t, "run", "--config", file)
	if code != 2 || !strings.Contains(errOut, "public.bid is partitioned (its partitions public.bid_a DEFAULT, public.bid_b_lo DEFAULT") ||
		!strings.Contains(errOut, "fix: ALTER TABLE public.bid_a REPLICA IDENTITY FULL; ALTER TABLE public.bid_b_lo REPLICA IDENTITY FULL;") {
		t.Fatalf("run with partitions that send no old row: exit %d; want 2 and the partitions named", code)
	}

	out, _, code = pubCLI(t, "setup", "--config", file, "--replica-identity")
	if code != 0 {
		t.Fatalf("setup --replica-identity exit %d", code)
	}
	ckWantLines(t, out,
		`set REPLICA IDENTITY FULL on public\.bid_a, a partition of public\.bid$`,
		`set REPLICA IDENTITY FULL on public\.bid_b_lo, a partition of public\.bid$`)
	ckNoLines(t, out, `set REPLICA IDENTITY FULL on public\.bid$`, `warn`)
	if n := db.count(t, `SELECT count(*) FROM pg_partition_tree('bid') pt JOIN pg_class c ON c.oid = pt.relid
		WHERE (pt.isleaf OR pt.level = 0) AND c.relreplident <> 'f'`); n != 0 {
		t.Fatalf("%d tables of bid's tree without FULL after setup --replica-identity", n)
	}
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check after setup --replica-identity exit %d", code)
	}
	ckWantLines(t, out, `ok    table public\.bid: readable, 3 columns, REPLICA IDENTITY FULL, as are its 2 partitions$`)
	if out, _, _ = pubCLI(t, "setup", "--config", file, "--replica-identity"); strings.Contains(out, "set REPLICA IDENTITY") {
		t.Error("a second setup --replica-identity altered a table again")
	}

	db.exec(t, `INSERT INTO bid (id, lot, amount) VALUES (1, 1, 10), (2, 2, 20)`)
	p := startRunProc(t, "--config", file)
	db.exec(t, `UPDATE bid SET amount = amount + 5`)
	runWaitFor(t, 30*time.Second, "an update delivered per partition", func() bool { return rc.Unique() == 2 }, p.diag)
	got := map[string]string{}
	for _, d := range rc.deliveries() {
		data, _ := runBody(t, d.Body)["data"].(map[string]any)
		got[fmt.Sprint(data["lot"])] = fmt.Sprintf("%v→%v", data["previous_amount"], data["amount"])
	}
	if want := map[string]string{"1": "10→15", "2": "20→25"}; !maps.Equal(got, want) {
		t.Errorf("delivered amounts per lot %v, want %v", got, want)
	}

	// A partition created while walhook runs: its update arrives without
	// the old row, and run stops saying what the partition needs.
	db.exec(t, `CREATE TABLE bid_c PARTITION OF bid FOR VALUES IN (3)`)
	db.exec(t, `INSERT INTO bid (id, lot, amount) VALUES (3, 3, 30)`)
	db.exec(t, `UPDATE bid SET amount = 35 WHERE lot = 3`)
	runWaitFor(t, 30*time.Second, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	if err, _ := p.exited(); err == nil || !strings.Contains(err.Error(), "arrived without the old row") ||
		!strings.Contains(err.Error(), "each partition needs REPLICA IDENTITY FULL of its own") {
		t.Fatalf("run ended with %v, want the missing old row and the partitions' hint", err)
	}
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check after a new partition exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  rule: .*\(its partitions public\.bid_c DEFAULT: .* — fix: ALTER TABLE public\.bid_c REPLICA IDENTITY FULL; \(or walhook setup --replica-identity\)$`)
}

// A partition created while walhook runs, with the default REPLICA
// IDENTITY: nothing has failed yet, but the first update in it will stop
// run. The leader's watch finds it within publicationPoll and says so
// (log, /api/v1/status slot.warnings, walhook_rule_table_problems) with
// the fix; once fixed, the warning goes and the partition's updates are
// delivered with their old values.
func TestRunWarnsOfANewPartitionWithoutFullIdentity(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, identBidSchema+`ALTER TABLE bid REPLICA IDENTITY FULL; ALTER TABLE bid_a REPLICA IDENTITY FULL;
		ALTER TABLE bid_b_lo REPLICA IDENTITY FULL;`)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(identBidConfig), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	warnings := func() []any {
		code, env := runAPI(t, "GET", base+"/api/v1/status", runAPIKey, "")
		data, _ := env["data"].(map[string]any)
		if code != 200 || data == nil {
			t.Fatalf("status: %d %v", code, env)
		}
		slot, _ := data["slot"].(map[string]any)
		w, _ := slot["warnings"].([]any)
		return w
	}
	problems := func() string {
		m := regexp.MustCompile(`(?m)^walhook_rule_table_problems (\S+)$`).FindStringSubmatch(runMetrics(t, base))
		if m == nil {
			t.Fatal("no walhook_rule_table_problems on /metrics")
		}
		return m[1]
	}
	if w := warnings(); w != nil {
		t.Fatalf("warnings before any change: %v", w)
	}

	db.exec(t, `CREATE TABLE bid_c PARTITION OF bid FOR VALUES IN (3)`)
	// (polled on /metrics: the status API has a rate limit)
	runWaitFor(t, 3*publicationPoll, "the warning", func() bool { return problems() != "0" }, p.diag)
	w := warnings()
	want := `event bid.raised: reads old values (changed: amount, data: amount) but public.bid has REPLICA IDENTITY DEFAULT, which does not send them (its partitions public.bid_c DEFAULT: `
	if len(w) != 1 || !strings.Contains(w[0].(string), want) ||
		!strings.HasSuffix(w[0].(string), "— fix: ALTER TABLE public.bid_c REPLICA IDENTITY FULL; (or walhook setup --replica-identity)") {
		t.Fatalf("status warnings %q, want one naming bid_c and its fix", w)
	}
	if got := problems(); got != "1" {
		t.Errorf("walhook_rule_table_problems %s, want 1", got)
	}
	if logs := p.stderr.String(); !strings.Contains(logs, "the rule tables no longer send what the rules need") ||
		!strings.Contains(logs, "ALTER TABLE public.bid_c REPLICA IDENTITY FULL;") {
		t.Errorf("no error logged naming the partition's fix")
	}
	if _, done := p.exited(); done {
		t.Fatal("run stopped at a warning")
	}

	db.exec(t, `ALTER TABLE bid_c REPLICA IDENTITY FULL`)
	runWaitFor(t, 3*publicationPoll, "the warning to go", func() bool { return problems() == "0" }, p.diag)
	if w := warnings(); w != nil {
		t.Errorf("status warnings %q after the fix, want none", w)
	}
	if !strings.Contains(p.stderr.String(), "the rule tables send what the rules need again") {
		t.Error("the fix was not logged")
	}
	db.exec(t, `INSERT INTO bid (id, lot, amount) VALUES (3, 3, 30)`)
	db.exec(t, `UPDATE bid SET amount = 35 WHERE lot = 3`)
	runWaitFor(t, 30*time.Second, "the partition's update", func() bool { return rc.Unique() == 1 }, p.diag)
	data, _ := runBody(t, rc.deliveries()[0].Body)["data"].(map[string]any)
	if fmt.Sprint(data["previous_amount"], "→", data["amount"]) != "30→35" {
		t.Errorf("delivered %v, want 30→35", data)
	}
}
