package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testEnv is an env on the shared cluster with the bench schema in a fresh
// database and the receiver's server running (no walhook binary).
func testEnv(t *testing.T, o options) *env {
	t.Helper()
	c := pgtest.Shared(t)
	ctx := context.Background()
	samples, err := findSamples("")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{o: o, log: io.Discard, dir: t.TempDir(), samples: samples, cluster: c,
		db: fmt.Sprintf("bench_%d_%d", os.Getpid(), time.Now().UnixNano()%1e9)}
	e.dsn = c.DSN(e.db)
	if err := e.loadSchema(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.DropDatabase(context.Background(), e.db) })
	e.secret = dispatch.NewSecret()
	if e.key, err = dispatch.DecodeSecret(e.secret); err != nil {
		t.Fatal(err)
	}
	if err := e.startReceiver(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.srv.Close() })
	return e
}

func count(t *testing.T, dsn, sql string) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// Two workers × one full cycle: every step ran, and the rows the events
// stand for are in the database.
func TestLoadCycle(t *testing.T) {
	e := testEnv(t, options{})
	got, err := load{dsn: e.dsn, workers: 2, asyncCommit: true}.run(context.Background(), 2*len(steps))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"member.invited": 2, "member.joined": 2, "submission.created": 4, "submission.updated": 2,
		"inspection.created": 2, "inspection.defect_added": 2, "problem.created": 2,
		"problem.status_changed": 2, "problem.assigned": 2, "channel.created": 2,
		"message.created": 14, "message.edited": 2, "message.deleted": 2,
	}
	if fmtCounts(got) != fmtCounts(want) {
		t.Errorf("events\n got %s\nwant %s", fmtCounts(got), fmtCounts(want))
	}
	for sql, want := range map[string]int{
		`SELECT count(*) FROM messages WHERE author_id <> '` + ownerID + `'`:                            14,
		`SELECT count(*) FROM messages WHERE deleted_at IS NOT NULL`:                                    2,
		`SELECT count(*) FROM messages WHERE edited_at IS NOT NULL`:                                     2,
		`SELECT count(*) FROM members WHERE accepted_at IS NOT NULL AND id <> '` + ownerID + `'`:        2,
		`SELECT count(*) FROM problem_reports WHERE status = 'in_progress' AND assignee_id IS NOT NULL`: 2,
		`SELECT count(*) FROM lot_submissions WHERE item_count = 12`:                                    2,
	} {
		if n := count(t, e.dsn, sql); n != want {
			t.Errorf("%s = %d, want %d", sql, n, want)
		}
	}
}

// A paced load takes about n/rate and reports each change before sending.
func TestLoadPaced(t *testing.T) {
	e := testEnv(t, options{})
	lat := newLatencies()
	start := time.Now()
	if _, err := (load{dsn: e.dsn, workers: 4, rate: 200, before: lat.before}).run(context.Background(), 100); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 450*time.Millisecond {
		t.Errorf("100 changes at 200/s took %s, want ≥ ~0.5s", took)
	}
	if len(lat.sent) != 100 {
		t.Errorf("before called for %d distinct changes, want 100", len(lat.sent))
	}
}

// The bare loop posts every body the receiver holds again, signed, under
// new ids, and the verifying receiver accepts all of them.
func TestBareLoop(t *testing.T) {
	e := testEnv(t, options{concurrency: 4})
	rcv, err := e.newReceiver(true, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := dispatch.NewClient(dispatch.ClientOptions{Allow: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		body := fmt.Sprintf(`{"event":"message.created","webhook_id":"w%d","data":{"id":"%d"}}`, i, i)
		if res := client.Send(context.Background(), dispatch.Request{URL: e.rcvURL, ID: fmt.Sprintf("w%d", i),
			Event: "message.created", Body: []byte(body), Keys: [][]byte{e.key}}); !res.OK() {
			t.Fatalf("prime: %v", res.Err)
		}
	}
	var r results
	if err := e.bareLoop(context.Background(), rcv, &r); err != nil {
		t.Fatal(err)
	}
	if r.bareUnique != 50 || rcv.Unique() != 100 || rcv.Rejected() != 0 {
		t.Errorf("bare unique %d, receiver unique %d rejected %d; want 50, 100, 0", r.bareUnique, rcv.Unique(), rcv.Rejected())
	}
}

// The bench config is one walhook's strict loader accepts, with the
// receiver as the only endpoint and the sample's rules.
func TestSessionConfig(t *testing.T) {
	e := testEnv(t, options{concurrency: 7})
	s, err := e.newSession("x", true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{e.rcvURL, "slot: " + s.name, "schema: " + s.name, "127.0.0.1", "max_in_flight_per_endpoint: 7", "event: problem.status_changed"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("config lacks %q:\n%s", want, b)
		}
	}
}

// pgbench runs in the three setups that need no walhook binary; the
// trigger design's worker hears a notification per event.
func TestPgbenchSetups(t *testing.T) {
	e := testEnv(t, options{duration: time.Second, clients: 2})
	ctx := context.Background()
	script := e.dir + "/app.sql"
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.cluster.Exec(ctx, e.db, "CREATE PUBLICATION bench_recv FOR TABLE "+recvTables); err != nil {
		t.Fatal(err)
	}
	var r results
	for _, s := range []string{setupBare, setupRecv, setupTrigger} {
		tps, err := e.pgbenchIn(ctx, s, script, 0, &r)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if tps <= 0 {
			t.Errorf("%s: tps %v", s, tps)
		}
	}
	if len(r.notified) != 1 || r.notified[0] == 0 {
		t.Errorf("trigger notifications %v, want one round with some", r.notified)
	}
	if n := count(t, e.dsn, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d slots left behind", n)
	}
	if n := count(t, e.dsn, `SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal`); n != 0 {
		t.Errorf("%d triggers left behind", n)
	}
}

func TestParseTPS(t *testing.T) {
	out := []byte("number of transactions actually processed: 1234\nlatency average = 1.2 ms\ninitial connection time = 3.1 ms\ntps = 1234.567890 (without initial connection time)\n")
	got, err := parseTPS(out)
	if err != nil || got != 1234.56789 {
		t.Errorf("parseTPS = %v, %v", got, err)
	}
	if _, err := parseTPS([]byte("pgbench: error: connection refused")); err == nil || !strings.Contains(err.Error(), "no tps line") {
		t.Errorf("parseTPS of an error output: %v", err)
	}
	if n, err := parseTxs(out); err != nil || n != 1234 {
		t.Errorf("parseTxs = %v, %v", n, err)
	}
	if _, err := parseTxs([]byte("pgbench: error: connection refused")); err == nil || !strings.Contains(err.Error(), "no transaction count") {
		t.Errorf("parseTxs of an error output: %v", err)
	}
}

func TestQuantileMedian(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if q := quantile(ds, 0.5); q != 50*time.Millisecond {
		t.Errorf("p50 = %s", q)
	}
	if q := quantile(ds, 0.99); q != 99*time.Millisecond {
		t.Errorf("p99 = %s", q)
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
}

func TestBadFlags(t *testing.T) {
	for args, want := range map[string]string{
		"--changes 0":     "--changes 0: must be at least 1",
		"--duration 10ms": "--duration 10ms: must be at least 1s",
		"--skip nothing":  `--skip "nothing"`,
		"--rounds 0":      "--rounds 0: must be at least 1",
		"stray":           `unexpected argument "stray"`,
	} {
		err := Run(context.Background(), strings.Fields(args), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", args, err, want)
		}
	}
}

// The whole command at a tiny scale against the real walhook binary: the
// table is printed and every number in it is sane (no timing assertions).
func TestSmoke(t *testing.T) {
	var out, log bytes.Buffer
	// cpu.yield off: the packages' tests share the CPUs, and a yielding
	// walhook would wait for them (TestTableWithYieldOff covers the extra rows).
	args := []string{"--changes", "300", "--rate", "100", "--duration", "2s", "--rounds", "1", "--clients", "4", "--concurrency", "8", "--cpu-yield=false"}
	if err := Run(context.Background(), args, &out, &log); err != nil {
		t.Fatalf("%v\nlog:\n%s", err, log.String())
	}
	t.Logf("\n%s", out.String())
	num := func(label string) float64 {
		t.Helper()
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(label) + `\s+([0-9.]+)`)
		m := re.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("no row %q in:\n%s", label, out.String())
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	for _, label := range []string{
		"end-to-end deliveries/s (backlog → receiver)",
		"bare loop deliveries/s (sign + POST, same bodies)",
		"commit → receiver p50 at 100/s (client clock)",
		"commit → receiver p99 at 100/s (client clock)",
		"pgbench TPS, no consumer",
		"pgbench TPS, pg_recvlogical consuming a slot",
		"pgbench TPS, walhook attached (run + receiver)",
		"pgbench TPS, trigger + queue table + pg_notify",
	} {
		if v := num(label); v <= 0 {
			t.Errorf("%s = %v, want > 0", label, v)
		}
	}
	if p50, p99 := num("commit → receiver p50 at 100/s (client clock)"), num("commit → receiver p99 at 100/s (client clock)"); p50 > p99 {
		t.Errorf("p50 %v > p99 %v", p50, p99)
	}
	for _, want := range []string{
		`backlog, time, first delivery after\s+300 in `,
		`duplicates / rejected at the receiver\s+\d+ / 0\s`, // nothing failed verification
		`changes delivered, achieved rate\s+200 of 200,`,
		`every delivery in the outbox after \(ingest\)\s+[0-9.]+m?s, \d+/s`,
		// the split of the CPU time: each part measured (or n/a where /proc is missing)
		`of it: walhook, receiver, PostgreSQL and the rest; bare loop: client and receiver\s+(\d+ µs|n/a), (\d+ µs|n/a), (-?\d+ µs|n/a); (\d+ µs|n/a)\s`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("table lacks %s", want)
		}
	}
}

// --statements loads pg_stat_statements into the bench's cluster and logs
// the store's statements of the saturation measure, the claim among them;
// --store-db keeps the outbox in a database of its own, and every change
// still arrives.
func TestStatementsAndStoreDB(t *testing.T) {
	var out, log bytes.Buffer
	args := []string{"--changes", "200", "--skip", "latency", "--skip", "pgbench", "--concurrency", "4", "--statements", "--store-db", "--cpu-yield=false"}
	if err := Run(context.Background(), args, &out, &log); err != nil {
		t.Fatalf("%v\nlog:\n%s", err, log.String())
	}
	for _, want := range []string{"store statements over the saturation measure", "calls", "UPDATE", "deliveries"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
	for _, want := range []string{`flags: .* --store-db --cpu-yield=false`, `backlog, time, first delivery after\s+200 in`, `duplicates / rejected at the receiver\s+0 / 0`} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// With cpu.yield on (the default), the pgbench part also runs walhook with
// it off, and the table shows both.
func TestTableWithYieldOff(t *testing.T) {
	r := results{opts: options{cpuYield: true, rounds: 2, clients: 16, duration: time.Second}, pgVersion: "15"}
	r.tps = map[string][]float64{
		setupBare: {100, 110}, setupRecv: {90, 90}, setupWalhook: {72, 80}, setupNoYield: {50, 60}, setupTrigger: {40, 40},
	}
	r.delivered = map[string][]int{setupWalhook: {10, 20}, setupNoYield: {30, 40}}
	r.caughtUp = map[string][]time.Duration{setupWalhook: {21 * time.Second, 19500 * time.Millisecond}, setupNoYield: {300 * time.Millisecond, time.Second}}
	var out bytes.Buffer
	printTable(&out, r)
	for _, want := range []string{
		`pgbench TPS, walhook attached \(run \+ receiver\)\s+76 `,
		`pgbench TPS, walhook attached, cpu.yield off\s+55 `,
		`ratio walhook / pg_recvlogical\s+0.84\s+≥ 0.90\s+MISSED`,
		`ratio walhook / trigger\s+1.90\s+≥ 1.50\s+met`,
		`cpu.yield off: ratios to pg_recvlogical, trigger\s+0.61, 1.38`,
		`walhook deliveries during its pgbench runs\s+10, 20`,
		`cpu.yield off: deliveries during its pgbench runs\s+30, 40`,
		`walhook: every webhook of a run received, after its end\s+21.0 s, 19.5 s`,
		`cpu.yield off: every webhook of a run received, after its end\s+0.3 s, 1.0 s`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("table lacks %s:\n%s", want, out.String())
		}
	}
	r.opts.cpuYield = false
	delete(r.tps, setupNoYield)
	out.Reset()
	printTable(&out, r)
	if strings.Contains(out.String(), "cpu.yield off:") || !strings.Contains(out.String(), "--cpu-yield=false") {
		t.Errorf("with --cpu-yield=false:\n%s", out.String())
	}
}

// The pgbench part end to end with a real walhook (short runs): every
// setup gets a TPS, and walhook's row says when the run's webhooks had all
// arrived, which the bench waits for before the next setup.
func TestPgbenchPart(t *testing.T) {
	var out, log bytes.Buffer
	args := []string{"--skip", "e2e", "--skip", "latency", "--rounds", "1", "--duration", "1s", "--clients", "2", "--cpu-yield=false"}
	if err := Run(context.Background(), args, &out, &log); err != nil {
		t.Fatalf("%v\nlog:\n%s", err, log.String())
	}
	for _, want := range []string{
		`pgbench TPS, no consumer\s+\d+ `,
		`pgbench TPS, pg_recvlogical consuming a slot\s+\d+ `,
		`pgbench TPS, walhook attached \(run \+ receiver\)\s+\d+ `,
		`pgbench TPS, trigger \+ queue table \+ pg_notify\s+\d+ `,
		`walhook deliveries during its pgbench runs\s+\d+`,
		`walhook: every webhook of a run received, after its end\s+\d+\.\d s`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("table lacks %s:\n%s", want, out.String())
		}
	}
}
