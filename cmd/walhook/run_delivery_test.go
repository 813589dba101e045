package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/dispatch"

	"github.com/walhook/walhook/internal/receiver"
)

// A small source schema and mapping for the tests that are about running,
// not about the seeds: one event per inserted row, data.id = the row id.
const runItemsSchema = `CREATE TABLE items (id bigint PRIMARY KEY, auction_id text, n int NOT NULL DEFAULT 0);`

const runItemsConfig = `
source:
  dsn: set-by-test
events:
  - event: item.created
    table: public.items
    operations: [insert]
    data: [id, n]
`

// items prepares a database with runItemsSchema and returns it with the
// config file for settings (on top of the db's defaults).
func itemsRun(t *testing.T, settings map[string]any) (*runDB, string) {
	t.Helper()
	db := newRunDB(t, runItemsSchema)
	s := db.settings()
	for k, v := range settings {
		s[k] = v
	}
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	return db, file
}

func insertItems(t *testing.T, db *runDB, from, to int) {
	t.Helper()
	db.exec(t, `INSERT INTO items (id, auction_id) SELECT g, 'auc_' || (g % 3) FROM generate_series($1::int, $2::int) g`, from, to)
}

// Receiver answers 500 to the first request of each delivery, then 200:
// walhook retries on the configured (millisecond) schedule and the delivery
// ends delivered after two attempts, both in the delivery log.
func TestRunRetriesFailedAttempts(t *testing.T) {
	t.Parallel()
	var seen sync.Map
	rc := newRunReceiver(t, runSecret, func(d receiver.Delivery) int {
		if _, again := seen.LoadOrStore(d.ID, true); !again {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("flaky", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 5)
	runWaitFor(t, 30*time.Second, "5 deliveries delivered", func() bool {
		return db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == 5
	}, p.diag)
	if n := db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE attempts <> 2`); n != 0 {
		t.Errorf("%d deliveries did not take exactly 2 attempts", n)
	}
	if n := db.count(t, `SELECT count(*) FROM walhook.attempts WHERE status_code = 500`); n != 5 {
		t.Errorf("%d attempts logged with 500, want 5", n)
	}
	if rc.Unique() != 5 || rc.Duplicates() != 5 {
		t.Errorf("receiver: %d unique, %d repeats; want 5 and 5 (each id retried once)", rc.Unique(), rc.Duplicates())
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// One endpoint hangs past the timeout on every request; the other, healthy
// one still receives every event, and the hanging one holds at most its
// in-flight cap of workers.
func TestRunDeadEndpointDoesNotBlockHealthyOne(t *testing.T) {
	t.Parallel()
	dead := newHangingEndpoint(t)
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{
		"endpoints": []map[string]any{
			runEndpoint("dead", dead.URL, runSecret2),
			runEndpoint("live", rc.URL, runSecret),
		},
		"delivery.timeout":                    "1s",
		"delivery.lease":                      "5s",
		"delivery.workers":                    4,
		"delivery.max_in_flight_per_endpoint": 2,
		"delivery.retry_schedule":             []string{"0s", "1s", "1s", "1s", "1s", "1s"},
	})
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 40)
	runWaitFor(t, 30*time.Second, "40 deliveries at the healthy endpoint", func() bool { return rc.Unique() == 40 }, p.diag)
	if dead.hung.Load() == 0 {
		t.Error("the dead endpoint was never tried")
	}
	if n := db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'static:dead' AND status = 'delivered'`); n != 0 {
		t.Errorf("%d deliveries to the hanging endpoint counted as delivered", n)
	}
	runWaitFor(t, 30*time.Second, "40 deliveries to the healthy endpoint recorded", func() bool {
		return db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'static:live' AND status = 'delivered'`) == 40
	}, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

var apiAddrRE = regexp.MustCompile(`api (http://127\.0\.0\.1:\d+)`)

// apiGet calls the admin API of a running walhook.
func apiGet(t *testing.T, base, path string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.Header.Set("X-API-Key", runAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return m
}

// Two walhook run processes on one store: one holds the slot, the other
// delivers only; every delivery is completed once (no duplicates without a
// crash). When the leader stops, the other takes the slot over from the
// store's cursor and delivers what follows.
func TestRunTwoProcessesOneStore(t *testing.T) {
	t.Parallel()
	rc, db, a, b := startLeaderAndStandby(t)
	m := apiAddrRE.FindStringSubmatch(b.stdout.String())
	if m == nil {
		t.Fatalf("no API address in B's startup line %q", b.stdout.String())
	}
	st := apiGet(t, m[1], "/api/v1/status")
	if slot, _ := st["data"].(map[string]any)["slot"].(map[string]any); slot == nil || slot["state"] != stateStandby || slot["active"] != true {
		t.Errorf("B's /api/v1/status slot = %v, want state standby and the slot active (held by A)", st["data"])
	}

	insertItems(t, db, 1, 200)
	runWaitFor(t, 30*time.Second, "200 deliveries", func() bool { return rc.Unique() == 200 }, b.diag)

	if err := a.stop(t); err != nil {
		t.Fatalf("stop A: %v", err)
	}
	runWaitFor(t, 30*time.Second, "B to take the slot over", func() bool {
		return strings.Contains(b.stderr.String(), "this process holds the slot")
	}, b.diag)
	insertItems(t, db, 201, 300)
	runWaitFor(t, 30*time.Second, "300 deliveries", func() bool { return rc.Unique() == 300 }, b.diag)
	if rc.Duplicates() != 0 {
		t.Errorf("%d duplicate requests without any crash", rc.Duplicates())
	}
	// The receiver answers before walhook records the outcome.
	runWaitFor(t, 30*time.Second, "300 deliveries recorded", func() bool {
		return db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == 300
	}, b.diag)
	if n := db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE attempts <> 1`); n != 0 {
		t.Errorf("%d deliveries not delivered in exactly one attempt", n)
	}
	byUA := map[string]int{}
	for _, d := range rc.deliveries() {
		byUA[d.Header.Get("User-Agent")]++
	}
	t.Logf("requests by process: %v", byUA)
	if byUA["walhook-B"] < 100 {
		t.Errorf("B sent %d requests; after A stopped it alone had 100 to send", byUA["walhook-B"])
	}
	if err := b.stop(t); err != nil {
		t.Fatalf("stop B: %v", err)
	}
	if cur, slot := db.cursor(t), db.slotLSN(t); slot != cur {
		t.Errorf("slot confirmed_flush_lsn %s, cursor %s after a graceful stop", slot, cur)
	}
}

// --dry-run prints the mapped events of the live stream as JSON lines and
// stores, delivers and confirms nothing: the slot does not move, and a real
// run afterwards still gets the same transactions.
func TestRunDryRun(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	insertItems(t, db, 1, 3)
	before := db.slotLSN(t)
	p := startRunProc(t, "--config", file, "--dry-run")
	runWaitFor(t, 30*time.Second, "3 JSON lines", func() bool { return strings.Count(p.stdout.String(), "\n") >= 3 }, p.diag)
	time.Sleep(1500 * time.Millisecond) // several status intervals: nothing may be confirmed
	if err := p.stop(t); err != nil {
		t.Fatalf("dry run stop: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(p.stdout.String()))
	n := 0
	for sc.Scan() {
		var line struct {
			EventID   string `json:"event_id"`
			Type      string `json:"event"`
			AuctionID string `json:"auction_id"`
			Body      map[string]any
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		n++
		data, _ := line.Body["data"].(map[string]any)
		if line.Type != "item.created" || line.EventID == "" || line.Body["event"] != "item.created" || data["id"] == nil || line.AuctionID == "" {
			t.Errorf("dry-run line %s", sc.Text())
		}
	}
	if n != 3 {
		t.Errorf("%d lines, want 3:\n%s", n, p.stdout.String())
	}
	if after := db.slotLSN(t); after != before {
		t.Errorf("dry run moved the slot from %s to %s", before, after)
	}
	if ev := db.count(t, `SELECT count(*) FROM walhook.events`); ev != 0 || db.cursor(t) != 0 {
		t.Errorf("dry run wrote the store: %d events, cursor %s", ev, db.cursor(t))
	}
	if rc.Unique() != 0 {
		t.Errorf("dry run delivered %d webhooks", rc.Unique())
	}

	real := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the 3 events, still in the slot", func() bool { return rc.Unique() == 3 }, real.diag)
	if err := real.stop(t); err != nil {
		t.Fatal(err)
	}
}

// Startup refusals: a store that was never set up, a cursor behind the
// slot (the store lost data), a cursor from another cluster, a bad config.
func TestRunRefusesToStart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	db := newRunDB(t, runItemsSchema)
	file, _ := runConfig(t, []byte(runItemsConfig), db.settings())
	_, errOut, code := runCLI(t, ctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "run walhook setup") {
		t.Errorf("no store: exit %d, %q; want 1 and \"run walhook setup\"", code, errOut)
	}

	_, errOut, code = runCLI(t, ctx, "run", "--config", file+".missing")
	if code != 2 {
		t.Errorf("missing config: exit %d (%s), want 2", code, errOut)
	}

	rc := newRunReceiver(t, runSecret, nil)
	db2, file2 := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file2)
	insertItems(t, db2, 1, 2)
	runWaitFor(t, 30*time.Second, "2 deliveries", func() bool { return rc.Unique() == 2 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	// No API keys while the API listens: refused as a bad config before
	// anything is written to the store (the static endpoint r2 is not).
	settings := db2.settings()
	settings["api.keys"] = []string{}
	settings["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret), runEndpoint("r2", rc.URL, runSecret)}
	noKeys, _ := runConfig(t, []byte(runItemsConfig), settings)
	_, errOut, code = runCLI(t, ctx, "run", "--config", noKeys)
	if code != 2 || !strings.Contains(errOut, noKeys+": api.keys: empty while api.listen is 127.0.0.1:0") {
		t.Errorf("no API keys: exit %d, %q; want 2 and the api.keys error", code, runTail(errOut, 600))
	}
	if n := db2.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1`, dispatch.StaticPrefix+"r2"); n != 0 {
		t.Error("run refused a config without API keys but had already stored its static endpoint r2")
	}
	db2.exec(t, `UPDATE walhook.cursor SET lsn = '0/10'`)
	_, errOut, code = runCLI(t, ctx, "run", "--config", file2)
	if code != 1 || !strings.Contains(errOut, "confirmed_flush_lsn") {
		t.Errorf("cursor behind slot: exit %d, %q; want 1 and the cursor error", code, runTail(errOut, 600))
	}
	// A rule table dropped and created again left the publication: run
	// refuses to stream a table that would never send a change.
	db2.exec(t, `DROP TABLE items; `+runItemsSchema)
	_, errOut, code = runCLI(t, ctx, "run", "--config", file2)
	if code != 1 || !strings.Contains(errOut, "does not publish public.items, which the rules map (was it dropped and created again") {
		t.Errorf("table out of the publication: exit %d, %q; want 1 and the publication error", code, runTail(errOut, 600))
	}
	// With a rule column gone as well, run names both problems at once,
	// before it writes anything (the static endpoint r2 is not stored).
	db2.exec(t, `ALTER TABLE items RENAME COLUMN n TO m`)
	withR2 := db2.settings()
	withR2["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret), runEndpoint("r2", rc.URL, runSecret)}
	fileR2, _ := runConfig(t, []byte(runItemsConfig), withR2)
	_, errOut, code = runCLI(t, ctx, "run", "--config", fileR2)
	if code != 2 || !strings.Contains(errOut, "the mapping does not fit the source database") || !strings.Contains(errOut, `"n"`) ||
		!strings.Contains(errOut, "does not publish public.items, which the rules map") {
		t.Errorf("column gone and table out of the publication: exit %d, %q; want 2 and both problems", code, runTail(errOut, 600))
	}
	if n := db2.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1`, dispatch.StaticPrefix+"r2"); n != 0 {
		t.Error("run refused a mapping that does not fit the source but had already stored its static endpoint r2")
	}
	db2.exec(t, `ALTER TABLE items RENAME COLUMN m TO n`)
	db2.exec(t, `ALTER PUBLICATION walhook ADD TABLE items`)
	db2.exec(t, `UPDATE walhook.cursor SET lsn = $1::pg_lsn, system_id = '42'`, db2.slotLSN(t).String())
	_, errOut, code = runCLI(t, ctx, "run", "--config", file2)
	if code != 1 || !strings.Contains(errOut, "PostgreSQL system 42") {
		t.Errorf("cursor of another cluster: exit %d, %q; want 1 and the system id error", code, runTail(errOut, 600))
	}
	// check and setup say so too; --accept-gap does not paper over it.
	out, errOut, code := runCLI(t, ctx, "check", "--config", file2)
	if code != 1 {
		t.Errorf("check with a cursor of another cluster: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `FAIL  cursor: the store's cursor for slot \S+ was written while reading PostgreSQL system 42, but the source is system \d+ .* — fix: if this is the same database moved to another cluster .*walhook setup --accept-new-system.*; if it is a different database, another store.schema for this config`)
	_, errOut, code = runCLI(t, ctx, "setup", "--config", file2, "--accept-gap")
	if code != 1 || !strings.Contains(errOut, "PostgreSQL system 42") || strings.Contains(errOut, "accepted") {
		t.Errorf("setup --accept-gap with a cursor of another cluster: exit %d, %q; want 1 and the system id error", code, errOut)
	}
	if got := db2.count(t, `SELECT count(*) FROM walhook.cursor WHERE system_id = '42'`); got != 1 {
		t.Error("setup changed the cursor of another cluster")
	}
}

// Transactions already waiting in the stream are appended together: a
// backlog of 500 one-row transactions takes far fewer than 500 store
// commits (walhook_append_events counts one sample per Append).
func TestRunBatchesWaitingTransactions(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	for i := 1; i <= 500; i++ {
		insertItems(t, db, i, i)
	}
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "500 deliveries", func() bool { return rc.Unique() == 500 }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	body := runMetrics(t, base)
	sum := regexp.MustCompile(`(?m)^walhook_append_events_sum (\S+)$`).FindStringSubmatch(string(body))
	count := regexp.MustCompile(`(?m)^walhook_append_events_count (\S+)$`).FindStringSubmatch(string(body))
	if sum == nil || count == nil {
		t.Fatalf("no walhook_append_events in /metrics:\n%s", body)
	}
	t.Logf("500 events in %s appends (position advances included)", count[1])
	if sum[1] != "500" {
		t.Errorf("appended %s events, want 500", sum[1])
	}
	if n, _ := strconv.Atoi(count[1]); n == 0 || n > 250 {
		t.Errorf("%s appends for a backlog of 500 transactions: waiting transactions are not batched", count[1])
	}
}

// hangingEndpoint never answers: each request waits until the client
// gives up or release is called.
type hangingEndpoint struct {
	*httptest.Server
	hung    atomic.Int64 // requests received
	quit    chan struct{}
	release func()
}

func newHangingEndpoint(t *testing.T) *hangingEndpoint {
	h := &hangingEndpoint{quit: make(chan struct{})}
	var once sync.Once
	h.release = func() { once.Do(func() { close(h.quit) }) }
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.hung.Add(1)
		select {
		case <-r.Context().Done():
		case <-h.quit:
		}
	}))
	t.Cleanup(h.Close)
	t.Cleanup(h.release) // runs first: Close waits for handlers
	return h
}

// runMetrics returns the /metrics page of a running walhook.
func runMetrics(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// runStartedVia reads walhook_deliveries_started_total{via} from a
// /metrics page (0 when the series is not there yet).
func runStartedVia(metrics, via string) int {
	m := regexp.MustCompile(`(?m)^walhook_deliveries_started_total\{via="` + via + `"\} (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseFloat(m[1], 64)
	return int(n)
}

// A backlog in the slot flows to the workers at their pace: the consumer
// stores what they have room for and hands it straight over, so most
// deliveries start without a claim (walhook_deliveries_started_total
// {via="append"}), and the backlog is stored in many small store commits.
func TestRunHandsBacklogToWorkers(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{
		"endpoints":                           []map[string]any{runEndpoint("r", rc.URL, runSecret)},
		"delivery.workers":                    4,
		"delivery.max_in_flight_per_endpoint": 4,
		// A lease long enough for deliveries to be held beyond the busy
		// workers (the tests' 3 s lease leaves no time for that).
		"delivery.lease": "30s",
	})
	const n = 1000
	for i := 1; i <= n; i += 10 {
		insertItems(t, db, i, i+9)
	}
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 60*time.Second, "every delivery", func() bool { return rc.Unique() == n }, p.diag)
	runWaitFor(t, 30*time.Second, "every delivery recorded", func() bool {
		return db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == n
	}, p.diag)
	metrics := runMetrics(t, apiAddrRE.FindStringSubmatch(p.stdout.String())[1])
	appended, claimed := runStartedVia(metrics, "append"), runStartedVia(metrics, "claim")
	t.Logf("%d deliveries started via append, %d via claim", appended, claimed)
	if appended+claimed != n {
		t.Errorf("%d + %d deliveries started, want %d (each once)", appended, claimed, n)
	}
	// The first Append can hand over at most 4 + 8×4 = 36 deliveries;
	// without pacing the rest of the backlog would be stored pending.
	if appended < n/2 {
		t.Errorf("only %d of %d deliveries of a backlog were handed to the workers by Append", appended, n)
	}
	if rc.Duplicates() != 0 {
		t.Errorf("%d duplicate requests", rc.Duplicates())
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// Pacing never holds the slot back behind an endpoint that hangs: when
// no room frees up, the consumer stores the backlog pending and confirms
// it, as it would without workers.
func TestRunHangingEndpointDoesNotHoldBackTheSlot(t *testing.T) {
	t.Parallel()
	dead := newHangingEndpoint(t)
	db, file := itemsRun(t, map[string]any{
		"endpoints": []map[string]any{runEndpoint("dead", dead.URL, runSecret)},
		// Attempts that outlast the whole test: nothing the workers hold
		// frees up while the backlog is stored, however slow the machine.
		"delivery.timeout":                    "10m",
		"delivery.lease":                      "20m",
		"delivery.workers":                    2,
		"delivery.max_in_flight_per_endpoint": 2,
	})
	const n = 3000
	for i := 1; i <= n; i += 100 {
		insertItems(t, db, i, i+99)
	}
	var end string
	if err := db.pool.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	want, err := pglogrepl.ParseLSN(end)
	if err != nil {
		t.Fatal(err)
	}
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 90*time.Second, "the backlog stored and the cursor past it", func() bool {
		return db.cursor(t) >= want
	}, p.diag)
	// Well inside the attempt timeout: no attempt has ended, so no room
	// freed up while the backlog was stored.
	if got := db.count(t, `SELECT count(*) FROM walhook.attempts`); got != 0 {
		t.Errorf("%d attempts ended before the cursor passed the backlog, want none (no room freed)", got)
	}
	if got := db.count(t, `SELECT count(*) FROM walhook.deliveries`); got != n {
		t.Errorf("%d deliveries stored, want %d", got, n)
	}
	// The workers took their deliveries before the consumer stored the
	// rest; their requests may reach the endpoint a little later.
	runWaitFor(t, 60*time.Second, "the hanging endpoint to be tried", func() bool { return dead.hung.Load() > 0 }, p.diag)
	dead.release() // or the stop waits out the requests
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// Pacing keeps at most handoffMaxLag of WAL in the slot: a transaction
// committed longer ago than that is stored at full speed.
func TestMayPace(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		ago  time.Duration
		want bool
	}{
		{0, true}, {-time.Hour, true}, {handoffMaxLag, true},
		{handoffMaxLag + time.Millisecond, false}, {time.Hour, false},
	} {
		if got := mayPace(now.Add(-c.ago), now); got != c.want {
			t.Errorf("committed %s ago: mayPace = %v, want %v", c.ago, got, c.want)
		}
	}
}

// startLeaderAndStandby starts two walhook runs on one store and source
// (user agents walhook-A and walhook-B) delivering to one receiver, and
// returns once A holds the slot and B stands by.
func startLeaderAndStandby(t *testing.T) (*runReceiver, *runDB, *runProc, *runProc) {
	t.Helper()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, runItemsSchema)
	conf := func(ua string) string {
		s := db.settings()
		s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
		s["delivery.user_agent"] = ua
		file, cfg := runConfig(t, []byte(runItemsConfig), s)
		db.setup(t, cfg)
		return file
	}
	fileA, fileB := conf("walhook-A"), conf("walhook-B")
	a := startRunProc(t, "--config", fileA)
	// Holding the leader lock comes before the stream holds the slot:
	// wait for the stream.
	runWaitFor(t, 30*time.Second, "A to stream from the slot", func() bool {
		return strings.Contains(a.stderr.String(), `msg="replication started"`)
	}, a.diag)
	b := startRunProc(t, "--config", fileB)
	runWaitFor(t, 30*time.Second, "B to stand by", func() bool {
		return strings.Contains(b.stderr.String(), "another walhook process holds the replication slot")
	}, b.diag)
	return rc, db, a, b
}

// A store that fails the write of the static endpoints (here a trigger; a
// lock or statement timeout, a full disk) is a runtime failure, exit 1,
// not the bad config of exit 2: the config is fine.
func TestRunStoreFailureSyncingEndpointsIsNotBadConfig(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	db.exec(t, `CREATE FUNCTION walhook.refuse() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'the store refused the write'; END$$;
		CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON walhook.endpoints FOR EACH ROW EXECUTE FUNCTION walhook.refuse()`)
	_, errOut, code := runCLI(t, context.Background(), "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "the store refused the write") {
		t.Fatalf("exit %d, stderr %q; want 1 and the store's error", code, runTail(errOut, 600))
	}
}
