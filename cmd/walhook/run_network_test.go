package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/internal/faultproxy"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/receiver"
)

// Network faults between a running walhook and its source, its store (a
// cluster of its own) and its receiver, injected by a TCP proxy in front
// of each (internal/faultproxy): resets, links that drop every packet for
// a while, connections a NAT forgot (blackholed for good while new ones
// go through), responses lost after the request arrived.

// netRig is the items source and a store on clusters of their own, and a
// verifying receiver, each reached by walhook through a fault proxy.
type netRig struct {
	db               *runDB
	src, store       *pgtest.Cluster
	rc               *runReceiver
	srcP, storeP, rP *faultproxy.Proxy
	file             string
}

// startProxy starts a fault proxy in front of addr, closed at the test's end.
func startProxy(t *testing.T, addr string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// viaProxy is dsn (a pgtest TCP DSN) with its port replaced by p's, and a
// password walhook must not log.
func viaProxy(t *testing.T, c *pgtest.Cluster, p *faultproxy.Proxy) string {
	t.Helper()
	dsn := c.DSN("postgres")
	from := fmt.Sprintf("127.0.0.1:%d/", c.Port)
	if !strings.Contains(dsn, from) {
		t.Fatalf("DSN %q is not on 127.0.0.1:%d", dsn, c.Port)
	}
	dsn = strings.Replace(dsn, from, fmt.Sprintf("127.0.0.1:%d/", p.Port()), 1)
	return strings.Replace(dsn, "postgres@", "postgres:"+runDSNPassword+"@", 1)
}

// newNetRig prepares the rig for slot with settings on top of the run
// tests' defaults; status, when set, answers the receiver's requests.
func newNetRig(t *testing.T, slot string, status func(receiver.Delivery) int, settings map[string]any) *netRig {
	t.Helper()
	r := &netRig{src: pgtest.StartT(t, pgtest.Options{}), store: pgtest.StartT(t, pgtest.Options{})}
	r.db = &runDB{dsn: r.src.DSN("postgres"), pool: testPool(t, r.src.DSN("postgres")), schema: "walhook", slot: slot}
	if _, err := r.db.pool.Exec(context.Background(), runItemsSchema); err != nil {
		t.Fatalf("load schema: %v", err)
	}
	r.rc = newRunReceiver(t, runSecret, status)
	r.srcP = startProxy(t, fmt.Sprintf("127.0.0.1:%d", r.src.Port))
	r.storeP = startProxy(t, fmt.Sprintf("127.0.0.1:%d", r.store.Port))
	u, err := url.Parse(r.rc.URL)
	if err != nil {
		t.Fatal(err)
	}
	r.rP = startProxy(t, u.Host)
	s := r.db.settings()
	s["source.dsn"] = viaProxy(t, r.src, r.srcP)
	s["store.dsn"] = viaProxy(t, r.store, r.storeP)
	s["endpoints"] = []map[string]any{runEndpoint("r", fmt.Sprintf("http://127.0.0.1:%d/hooks", r.rP.Port()), runSecret)}
	for k, v := range settings {
		s[k] = v
	}
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	r.file = file
	r.db.setup(t, cfg)
	migrateStore(t, r.store)
	return r
}

// failFirst answers 500 to the first request of each delivery, then 204:
// every delivery needs a retry, which only a claim sends.
func failFirst() func(receiver.Delivery) int {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(d receiver.Delivery) int {
		mu.Lock()
		defer mu.Unlock()
		if !seen[d.ID] {
			seen[d.ID] = true
			return 500
		}
		return 204
	}
}

// The store's connections are blackholed for good (a NAT or load balancer
// that forgot them) while walhook has retries to send: new connections go
// through. Every delivery still gets its retry, which only a claim sends,
// within the bounds walhook's store calls have; before, the claim in
// flight (and the lease rescue) waited on its dead connection for as long
// as TCP takes, forever behind a middlebox that keeps the socket open, and
// no retry was sent again.
func TestRunStoreBlackholedWhileClaiming(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netclaim", failFirst(), map[string]any{"delivery.retry_schedule": []string{"0s", "3s"}})
	spool := testPool(t, r.store.DSN("postgres"))
	p := startRunProc(t, "--config", r.file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	insertItems(t, r.db, 1, 40)
	runWaitFor(t, 30*time.Second, "40 first attempts failed and recorded", func() bool {
		var n int
		err := spool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries WHERE status = 'pending' AND attempts = 1`).Scan(&n)
		return err == nil && n == 40
	}, alive)
	n := r.storeP.Blackhole()
	t.Logf("blackholed %d store connections", n)
	runWaitFor(t, 45*time.Second, "40 retries after the store's connections were blackholed",
		func() bool { return r.rc.Unique() == 40 && r.rc.Duplicates() >= 40 }, alive)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if strings.Contains(p.stderr.String(), runDSNPassword) {
		t.Error("the log holds the DSN's password")
	}
	t.Logf("walhook run warnings:\n%s", runTail(warnLines(p.stderr.String()), 3000))
}

// The store's connections are blackholed for good while walhook leads:
// its lock session stops answering, the term ends, and walhook leads
// again within seconds, ending its own lost session (which holds the lock
// on the server until idle_session_timeout, a minute, behind a middlebox
// that answers TCP keepalives; no process could lead until then). Every
// change written meanwhile is delivered.
func TestRunLeadsAgainAfterItsLockSessionIsBlackholed(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netlock", nil, nil)
	p := startRunProc(t, "--config", r.file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	insertItems(t, r.db, 1, 10)
	runWaitFor(t, 30*time.Second, "10 deliveries", func() bool { return r.rc.Unique() == 10 }, alive)
	r.storeP.Blackhole()
	blackholed := time.Now()
	insertItems(t, r.db, 11, 30)
	// The lock's check notices within leaderPoll + leaderQueryTimeout;
	// a term's start and the first Append then take a fresh connection
	// each (the pool's ping bounds a dead idle one). Well inside
	// idle_session_timeout.
	runWaitFor(t, 40*time.Second, "30 deliveries after the store's connections were blackholed", func() bool { return r.rc.Unique() == 30 }, alive)
	t.Logf("delivered the changes written after the blackhole %s after it", time.Since(blackholed).Round(time.Second))
	if !strings.Contains(p.stderr.String(), "ended this process's lock session that stopped answering") {
		t.Errorf("the log does not say walhook ended its lost lock session:\n%s", runTail(warnLines(p.stderr.String()), 3000))
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if r.db.rcLeaked(t, p) {
		t.Error("the log holds the DSN's password")
	}
}

// rcLeaked reports whether p's log holds the DSN's password.
func (d *runDB) rcLeaked(t *testing.T, p *runProc) bool {
	t.Helper()
	return strings.Contains(p.stderr.String()+p.stdout.String(), runDSNPassword)
}

// chaosFault is one network fault the chaos test injects.
type chaosFault struct {
	name string
	do   func(r *netRig)
}

// chaosFaults are the faults production networks cause, on each of
// walhook's three links.
var chaosFaults = []chaosFault{
	// Every source connection reset: the replication connection mid-
	// transaction (often inside one larger than max_chunk_changes).
	{"source: reset every connection", func(r *netRig) { r.srcP.ResetAll() }},
	// The replication connection cut mid-message, a few KB into what the
	// server sends after START_REPLICATION.
	{"source: replication cut mid-message", func(r *netRig) {
		r.srcP.AddRule(&faultproxy.Rule{Match: []byte("START_REPLICATION"), After: 3000 + rand.Int64N(20000)})
		r.srcP.ResetAll()
	}},
	// Packets dropped for a few seconds, then the link recovers (well
	// inside the receive timeout: nothing is reconnected).
	{"source: link stalls 4s", func(r *netRig) { r.srcP.Stall(4 * time.Second) }},
	{"source: refuses connections for 2s, then resets", func(r *netRig) { r.srcP.Refuse(2 * time.Second); r.srcP.ResetAll() }},
	{"store: reset every connection", func(r *netRig) { r.storeP.ResetAll() }},
	// The store gets COMMIT (an Append's, a claim's, an outcome's) and
	// the answer is lost: was it committed?
	{"store: connection reset after COMMIT arrived", func(r *netRig) {
		r.storeP.AddRule(&faultproxy.Rule{Match: []byte("COMMIT"), After: 0, Times: 2})
	}},
	{"store: link stalls 3s", func(r *netRig) { r.storeP.Stall(3 * time.Second) }},
	{"store: refuses connections for 2s, then resets", func(r *netRig) { r.storeP.Refuse(2 * time.Second); r.storeP.ResetAll() }},
	// The receiver handled the request; its response is lost.
	{"receiver: response lost", func(r *netRig) {
		r.rP.AddRule(&faultproxy.Rule{Match: []byte("POST /hooks"), After: 1, Times: 5})
	}},
	{"receiver: reset every connection", func(r *netRig) { r.rP.ResetAll() }},
	{"receiver: refuses connections for 2s", func(r *netRig) { r.rP.Refuse(2 * time.Second) }},
}

// walhookSessions counts walhook's sessions on pool's server
// (application_name walhook).
func walhookSessions(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'walhook'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Thousands of changes, in transactions of one row to several times
// max_chunk_changes, while the network between walhook and its source,
// its store and its receiver fails at random moments in every way
// chaosFaults lists. Once the faults stop, walhook recovers by itself:
// every change's event arrives at the verifying receiver at least once
// (a repeat with the same webhook-id), nothing else arrives, the slot is
// confirmed to the end of the WAL written, walhook's sessions on both
// servers are back to their steady count, and the log names the faults
// without the DSNs' password.
func TestRunChaosNetwork(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netchaos", nil, map[string]any{
		"source.max_chunk_changes": 100,
		"delivery.timeout":         "2s",
		"delivery.retry_schedule":  []string{"0s", "100ms", "300ms", "1s"},
	})
	spool := testPool(t, r.store.DSN("postgres"))
	p := startRunProc(t, "--config", r.file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 6000))
		}
		return p.diag()
	}
	insertItems(t, r.db, 1, 10)
	runWaitFor(t, 30*time.Second, "the first 10 deliveries", func() bool { return r.rc.Unique() == 10 }, alive)
	steadySrc, steadyStore := walhookSessions(t, r.db.pool), walhookSessions(t, spool)

	// The workload: thousands of rows over 20 s, in transactions of 1 to
	// 25 rows and, one in eight, 150 to 400 (chunked).
	const workFor = 20 * time.Second
	var wg sync.WaitGroup
	total := 10
	wg.Go(func() {
		ctx := context.Background()
		for end := time.Now().Add(workFor); time.Now().Before(end); {
			n := 1 + rand.IntN(25)
			if rand.IntN(8) == 0 {
				n = 150 + rand.IntN(250)
			}
			if _, err := r.db.pool.Exec(ctx, `INSERT INTO items (id, auction_id) SELECT g, 'auc_' || (g % 3) FROM generate_series($1::int, $2::int) g`,
				total+1, total+n); err != nil {
				t.Errorf("workload: %v", err)
				return
			}
			total += n
			time.Sleep(time.Duration(20+rand.IntN(100)) * time.Millisecond)
		}
	})
	// Throughout, the slot (read first) is never confirmed past the
	// store's cursor (read after; it only grows): cdc confirms only what
	// the store committed, whatever the faults did to an Append's COMMIT.
	sampling := make(chan struct{})
	wg.Go(func() {
		ctx := context.Background()
		for {
			select {
			case <-sampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var slotLSN, cursor string
			if err := r.db.pool.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.db.slot).Scan(&slotLSN); err != nil {
				continue
			}
			if err := spool.QueryRow(ctx, `SELECT lsn::text FROM walhook.cursor WHERE slot = $1`, r.db.slot).Scan(&cursor); err != nil {
				continue
			}
			if r.db.count(t, `SELECT count(*) WHERE $1::pg_lsn > $2::pg_lsn`, slotLSN, cursor) != 0 {
				t.Errorf("the slot was confirmed to %s, past the store's cursor %s", slotLSN, cursor)
			}
		}
	})
	// The faults: one every 1.5 to 3 s, each kind at least once.
	faultsBegan := time.Now()
	order := rand.Perm(len(chaosFaults))
	var injected []string
	for i, end := 0, time.Now().Add(workFor); time.Now().Before(end) || i < len(chaosFaults); i++ {
		time.Sleep(1500*time.Millisecond + time.Duration(rand.IntN(1500))*time.Millisecond)
		f := chaosFaults[order[i%len(order)]]
		if i >= len(order) {
			f = chaosFaults[rand.IntN(len(chaosFaults))]
		}
		f.do(r)
		injected = append(injected, f.name)
		alive()
	}
	close(sampling)
	wg.Wait()
	for _, pr := range []*faultproxy.Proxy{r.srcP, r.storeP, r.rP} {
		pr.ClearRules()
		pr.Unstall()
	}
	faultsEnded := time.Now()
	t.Logf("%d faults injected over %s: %s", len(injected), faultsEnded.Sub(faultsBegan).Round(time.Second), strings.Join(injected, "; "))
	var walEnd string
	if err := r.db.pool.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&walEnd); err != nil {
		t.Fatal(err)
	}

	// Recovery: every event delivered within the bound the timeouts set
	// (an Append's 30 s, a claim's 15 s, the receive timeout's 60 s are
	// not reached by these faults) plus margin.
	runWaitFor(t, 60*time.Second, fmt.Sprintf("%d deliveries after the faults", total), func() bool { return r.rc.Unique() >= total }, alive)
	t.Logf("all %d events delivered %s after the faults ended; %d repeats", total, time.Since(faultsEnded).Round(100*time.Millisecond), r.rc.Duplicates())
	runWaitFor(t, 30*time.Second, "the slot confirmed past the WAL written", func() bool {
		return r.db.count(t, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::pg_lsn`, r.db.slot, walEnd) == 1
	}, alive)
	runWaitFor(t, 30*time.Second, "every delivery recorded delivered", func() bool {
		var n int
		err := spool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`).Scan(&n)
		return err == nil && n == total
	}, alive)
	// No connection left behind: on the source at most the replication
	// connection, the heartbeat's, the publication watch's and two status
	// readers' (docs/operations.md); on the store at most the pool (max(8, workers/2 + 6), 22
	// for the default 32 workers) and the two sessions taken out of it,
	// the leader lock's and the LISTEN.
	runWaitFor(t, 30*time.Second, "walhook's sessions back to their steady count", func() bool {
		return walhookSessions(t, r.db.pool) <= max(steadySrc, 5) && walhookSessions(t, spool) <= max(steadyStore, 22+2)
	}, func() string {
		return fmt.Sprintf("source sessions %d (steady %d), store sessions %d (steady %d)\n%s",
			walhookSessions(t, r.db.pool), steadySrc, walhookSessions(t, spool), steadyStore, alive())
	})

	// And walhook is whole again: it holds the slot and the leader lock,
	// listens, and delivers a change written now.
	runWaitFor(t, 30*time.Second, "walhook's replication, lock and LISTEN sessions", func() bool {
		return walhookSessions(t, r.db.pool) >= 1 && walhookSessions(t, spool) >= 2
	}, alive)
	insertItems(t, r.db, total+1, total+10)
	total += 10
	runWaitFor(t, 30*time.Second, "the 10 changes written after recovery delivered", func() bool { return r.rc.Unique() >= total }, alive)
	t.Logf("walhook's sessions: source %d (steady %d), store %d (steady %d)", walhookSessions(t, r.db.pool), steadySrc,
		walhookSessions(t, spool), steadyStore)
	// Exactly the rows written, each under one webhook-id.
	ids := map[string]string{} // row id -> webhook-id
	for wid, body := range r.rc.Bodies() {
		m := runBody(t, body)
		data, _ := m["data"].(map[string]any)
		row := fmt.Sprint(data["id"])
		if prev, ok := ids[row]; ok {
			t.Errorf("row %s delivered under two webhook-ids, %s and %s", row, prev, wid)
		}
		ids[row] = wid
	}
	for i := 1; i <= total; i++ {
		if _, ok := ids[strconv.Itoa(i)]; !ok {
			t.Errorf("row %d: no event delivered", i)
		}
	}
	if len(ids) != total || r.rc.Rejected() != 0 {
		t.Errorf("%d rows delivered, %d rejected; want %d and 0", len(ids), r.rc.Rejected(), total)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if r.db.rcLeaked(t, p) {
		t.Error("the log holds the DSN's password")
	}
	for _, want := range []string{"replication interrupted; reconnecting", "connection reset by peer"} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("the log does not say %q", want)
		}
	}
	t.Logf("walhook run warnings and errors:\n%s", runTail(warnLines(p.stderr.String()), 5000))
}

// Two walhook processes share the store, each over a link of its own.
// The leader's link to the store is reset and then refuses connections
// (the leader's host cut off from the store; its replication connection
// to the source still up): the server ends the leader's lock session, the
// standby takes the lock, and streams only once the old leader has
// stopped (PostgreSQL lets one walsender use the slot; the standby waits
// for it). The slot is never confirmed past the store's cursor, and every
// change written before, during and after the takeover is delivered.
func TestRunStandbyTakesOverWhenTheLeaderLosesTheStore(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_nettakeover", nil, map[string]any{"delivery.user_agent": "walhook-A"})
	spool := testPool(t, r.store.DSN("postgres"))
	storeB := startProxy(t, fmt.Sprintf("127.0.0.1:%d", r.store.Port))
	s := r.db.settings()
	s["source.dsn"] = viaProxy(t, r.src, r.srcP)
	s["store.dsn"] = viaProxy(t, r.store, storeB)
	s["endpoints"] = []map[string]any{runEndpoint("r", fmt.Sprintf("http://127.0.0.1:%d/hooks", r.rP.Port()), runSecret)}
	s["delivery.user_agent"] = "walhook-B"
	fileB, _ := runConfig(t, []byte(runItemsConfig), s)

	a := startRunProc(t, "--config", r.file)
	runWaitFor(t, 30*time.Second, "A to stream", func() bool { return strings.Contains(a.stderr.String(), `msg="replication started"`) }, a.diag)
	b := startRunProc(t, "--config", fileB)
	runWaitFor(t, 30*time.Second, "B to stand by", func() bool {
		return strings.Contains(b.stderr.String(), "another walhook process holds the replication slot")
	}, b.diag)
	insertItems(t, r.db, 1, 20)
	runWaitFor(t, 30*time.Second, "20 deliveries", func() bool { return r.rc.Unique() == 20 }, a.diag)

	var wg sync.WaitGroup
	done := make(chan struct{})
	total := 20
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			insertItems(t, r.db, total+1, total+10)
			total += 10
			var slotLSN, cursor string
			ctx := context.Background()
			if r.db.pool.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.db.slot).Scan(&slotLSN) == nil &&
				spool.QueryRow(ctx, `SELECT lsn::text FROM walhook.cursor WHERE slot = $1`, r.db.slot).Scan(&cursor) == nil &&
				r.db.count(t, `SELECT count(*) WHERE $1::pg_lsn > $2::pg_lsn`, slotLSN, cursor) != 0 {
				t.Errorf("the slot was confirmed to %s, past the store's cursor %s", slotLSN, cursor)
			}
		}
	})
	time.Sleep(time.Second)
	r.storeP.Refuse(time.Hour)
	r.storeP.ResetAll()
	cut := time.Now()
	runWaitFor(t, 30*time.Second, "B to stream", func() bool {
		return strings.Count(b.stderr.String(), `msg="replication started"`) > 0
	}, b.diag)
	t.Logf("B streams %s after A lost the store", time.Since(cut).Round(100*time.Millisecond))
	time.Sleep(2 * time.Second)
	close(done)
	wg.Wait()
	runWaitFor(t, 45*time.Second, fmt.Sprintf("%d deliveries", total), func() bool { return r.rc.Unique() == total }, b.diag)

	// A stopped streaming before B started. PostgreSQL lets one walsender
	// hold the slot, so B starts only once A's replication connection is
	// closed; A logs its stop just after closing it, and on a loaded
	// machine B may log its start in between. A stop logged more than a
	// second after B's start would mean A went on after B had the slot.
	stopA := logTime(t, a.stderr.String(), "stopped replicating; waiting to take the slot again")
	startB := logTime(t, b.stderr.String(), `msg="replication started"`)
	if stopA.After(startB.Add(time.Second)) {
		t.Errorf("B started streaming at %s, A stopped only at %s", startB, stopA)
	}
	if _, ok := a.exited(); ok {
		t.Errorf("A exited: %s", a.diag())
	}
	r.storeP.Refuse(0)
	for _, p := range []*runProc{a, b} {
		if err := p.stop(t); err != nil {
			t.Errorf("stop: %v", err)
		}
		if r.db.rcLeaked(t, p) {
			t.Error("the log holds the DSN's password")
		}
	}
	if ids := len(r.rc.Bodies()); ids != total || r.rc.Rejected() != 0 {
		t.Errorf("%d distinct webhook-ids, %d rejected; want %d and 0", ids, r.rc.Rejected(), total)
	}
}

// logTime is the time of the first log line holding s.
func logTime(t *testing.T, log, s string) time.Time {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, s) {
			continue
		}
		f := strings.Fields(line)
		if len(f) > 0 {
			if ts, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time=")); err == nil {
				return ts
			}
		}
	}
	t.Fatalf("no log line holds %q", s)
	return time.Time{}
}

// The store's connections are blackholed for good while walhook waits for
// notifications: its LISTEN connection, which gets nothing more, is found
// dead and made again within listenCheck and a ping's bound. Before, it
// was kept forever, and with it the notifications of other processes
// (an endpoint disabled or changed there) were missed for good.
func TestRunListensAgainAfterTheStoreIsBlackholed(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netlisten", nil, nil)
	spool := testPool(t, r.store.DSN("postgres"))
	p := startRunProc(t, "--config", r.file)
	listeners := func(since time.Time) int {
		var n int
		if err := spool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'walhook' AND query LIKE 'LISTEN %' AND backend_start > $1`, since).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	runWaitFor(t, 30*time.Second, "a LISTEN session on the store", func() bool { return listeners(time.Time{}) == 1 }, p.diag)
	insertItems(t, r.db, 1, 10)
	runWaitFor(t, 30*time.Second, "10 deliveries", func() bool { return r.rc.Unique() == 10 }, p.diag)
	time.Sleep(2 * time.Second) // the LISTEN's catch-up is done: only the wait is left
	cut := time.Now()
	r.storeP.Blackhole()
	runWaitFor(t, 50*time.Second, "a new LISTEN session on the store", func() bool { return listeners(cut) == 1 }, p.diag)
	t.Logf("listening again %s after the blackhole", time.Since(cut).Round(time.Second))
	if !strings.Contains(p.stderr.String(), "listen connection lost") {
		t.Errorf("the log does not say the listen connection was lost")
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// An Append's pipeline (its inserts, the cursor, COMMIT) reaches the
// store, which commits it, and the answer is lost: first the connection
// is reset after the answer's first byte, then (another Append) the rest
// of the answer never comes. walhook does not know whether the batch is
// stored, appends it again (the same event ids, a cursor that never goes
// back) once the reset is seen or its Append's 30 s bound passed, and
// confirms the slot only then; each row's event is delivered, under one
// webhook-id.
func TestRunAppendCommitAnswerLost(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netcommit", nil, nil)
	spool := testPool(t, r.store.DSN("postgres"))
	p := startRunProc(t, "--config", r.file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	insertItems(t, r.db, 1, 10)
	runWaitFor(t, 30*time.Second, "10 deliveries", func() bool { return r.rc.Unique() == 10 }, alive)
	// Only an Append's second round trip carries the slot's name (its
	// cursor's parameters) once the term has begun.
	for i, action := range []faultproxy.Action{faultproxy.Reset, faultproxy.BlackholeConn} {
		rule := r.storeP.AddRule(&faultproxy.Rule{Match: []byte(r.db.slot), After: 1, Action: action})
		from := 11 + 10*i
		insertItems(t, r.db, from, from+9)
		runWaitFor(t, 50*time.Second, fmt.Sprintf("%d deliveries", from+9), func() bool { return r.rc.Unique() == from+9 }, alive)
		if rule.Fired() != 1 {
			t.Errorf("the lost answer (action %d) fired %d times, want 1", action, rule.Fired())
		}
		r.storeP.ClearRules()
	}
	// The blackholed Append is given up on after its 30 s, appended
	// again, and confirmed: the slot reaches the WAL written.
	var walEnd string
	if err := r.db.pool.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&walEnd); err != nil {
		t.Fatal(err)
	}
	runWaitFor(t, 50*time.Second, "the slot confirmed past the WAL written", func() bool {
		return r.db.count(t, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn >= $2::pg_lsn`, r.db.slot, walEnd) == 1
	}, alive)
	var slotLSN, cursor string
	if err := r.db.pool.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.db.slot).Scan(&slotLSN); err != nil {
		t.Fatal(err)
	}
	if err := spool.QueryRow(context.Background(), `SELECT lsn::text FROM walhook.cursor WHERE slot = $1`, r.db.slot).Scan(&cursor); err != nil {
		t.Fatal(err)
	}
	if r.db.count(t, `SELECT count(*) WHERE $1::pg_lsn > $2::pg_lsn`, slotLSN, cursor) != 0 {
		t.Errorf("the slot was confirmed to %s, past the store's cursor %s", slotLSN, cursor)
	}
	if len(r.rc.Bodies()) != 30 {
		t.Errorf("%d webhook-ids for 30 rows", len(r.rc.Bodies()))
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("walhook run warnings:\n%s", runTail(warnLines(p.stderr.String()), 3000))
}

// The store pool closes a connection idle for storeIdleTime, inside the
// idle timeouts of NATs and load balancers (Azure's 4 min, AWS NAT's
// 350 s): one they forgot without a word costs whoever takes it next a
// ping's bound (storePingTimeout). pgx's default kept idle connections for
// 30 min. A DSN's pool_max_conn_idle_time still wins.
func TestStorePoolIdleTimeInsideMiddleboxTimeouts(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	for _, c := range []struct {
		dsn  string
		want time.Duration
	}{
		{dsn, storeIdleTime},
		{dsn + "&pool_max_conn_idle_time=7m", 7 * time.Minute},
	} {
		cfg := &config.Config{Store: config.Store{DSN: c.dsn}}
		pool, err := openStore(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := pool.Config().MaxConnIdleTime
		pool.Close()
		if got != c.want || got > 4*time.Minute-pool.Config().HealthCheckPeriod && c.want == storeIdleTime {
			t.Errorf("store pool's idle time %s (health check every %s), want %s", got, pool.Config().HealthCheckPeriod, c.want)
		}
	}
}
