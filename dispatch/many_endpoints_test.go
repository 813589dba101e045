package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

// hangingReceiver answers nothing until the test ends (or release is
// called), counting the requests it holds and the most it held at once.
type hangingReceiver struct {
	*obReceiver
	mu            sync.Mutex
	holding, most int
	release       func()
}

func newHangingReceiver(t *testing.T) *hangingReceiver {
	h := &hangingReceiver{}
	done := make(chan struct{})
	var once sync.Once
	h.release = func() { once.Do(func() { close(done) }) }
	h.obReceiver = obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		h.mu.Lock()
		h.holding++
		h.most = max(h.most, h.holding)
		h.mu.Unlock()
		<-done
		h.mu.Lock()
		h.holding--
		h.mu.Unlock()
		return 200
	})
	// Registered after the receiver's Close: runs before it.
	t.Cleanup(h.release)
	return h
}

func (h *hangingReceiver) counts() (holding, most int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.holding, h.most
}

// Many dead endpoints (failing, with due retries) must not hold every
// worker: a healthy endpoint's delivery starts while their requests hang.
// With 4 workers and 4 failing endpoints with a cap of 2 each, every
// worker hung on them until the attempt timed out (here a minute), and
// the healthy endpoint's event waited that long.
func TestFailingEndpointsLeaveWorkersForHealthyOnes(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) {
		o.Workers = 4
		o.MaxInFlightPerEndpoint = 2
		o.Client.Timeout = time.Minute
	})
	dead := newHangingReceiver(t)
	healthy := obNewReceiver(t, nil)
	for _, id := range []string{"dead1", "dead2", "dead3", "dead4"} {
		b.endpoint(t, id, dead.URL, nil, []string{"D"}, true)
	}
	b.endpoint(t, "healthy", healthy.URL, nil, []string{"H"}, true)
	ctx := context.Background()
	for i := range 5 {
		obAppend(t, d, cdc.LSN(100+i*10), obEvent("auction.bid_placed", "D"))
	}
	// They have failed before (in this process or another).
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET failing_since = now() - interval '1 hour' WHERE id LIKE 'dead%'`); err != nil {
		t.Fatal(err)
	}
	obRun(t, d)
	t.Cleanup(dead.release) // before the stop, which waits for the requests
	obWaitFor(t, "the dead endpoints' requests", func() bool { h, _ := dead.counts(); return h >= 2 })
	obAppend(t, d, 1000, obEvent("auction.bid_placed", "H"))
	deadline := time.Now().Add(20 * time.Second)
	for healthy.n() == 0 {
		if time.Now().After(deadline) {
			h, _ := dead.counts()
			t.Fatalf("the healthy endpoint's delivery did not start while %d requests to failing endpoints hang", h)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Failing endpoints may hold half the workers.
	if _, most := dead.counts(); most > 2 {
		t.Errorf("failing endpoints held %d of 4 workers at once, want at most 2", most)
	}
}

// A claim takes the healthy endpoints' due deliveries before the due
// retries of failing ones, however much older those are, and at most the
// failing endpoints' share of the workers (4 of 8 here) of the latter.
func TestClaimTakesHealthyEndpointsFirst(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	for _, id := range []string{"dead1", "dead2", "dead3"} {
		b.endpoint(t, id, "http://127.0.0.1:1/", nil, []string{"D"}, true)
	}
	b.endpoint(t, "healthy", "http://127.0.0.1:2/", nil, []string{"H"}, true)
	for i := range 5 {
		obAppend(t, d, cdc.LSN(100+i*10), obEvent("auction.bid_placed", "D"))
	}
	obAppend(t, d, 1000, obEvent("auction.bid_placed", "H"), obEvent("auction.bid_placed", "H"))
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET failing_since = now() - interval '1 hour' WHERE id LIKE 'dead%';
		UPDATE walhook.deliveries SET next_attempt_at = now() - interval '1 hour' WHERE endpoint_id LIKE 'dead%'`); err != nil {
		t.Fatal(err)
	}
	busy := &inflight{}
	busy.start(8, 16, 8, 16)
	cs, _, err := d.claim(ctx, 3, busy)
	if err != nil {
		t.Fatal(err)
	}
	var healthy, failing int
	for _, c := range cs {
		if c.endpointID == "healthy" {
			healthy++
		} else if c.failing {
			failing++
		}
	}
	if healthy != 2 || failing != 1 {
		t.Fatalf("a claim of 3 took %d of the healthy endpoint's 2 and %d failing, want 2 and 1", healthy, failing)
	}
	for _, c := range cs {
		busy.setFailing(c.endpointID, c.failing, time.Now())
		busy.add(c.endpointID, 1, false)
	}
	cs, _, err = d.claim(ctx, 20, busy)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 3 {
		t.Fatalf("with 1 failing delivery held, a claim took %d more of the failing endpoints' 14, want 3 (a share of 4)", len(cs))
	}
}

// A claim reads the endpoints that have pending deliveries, not every
// endpoint: with 2,000 endpoints of which one had due deliveries, each
// claim read all 2,000 endpoint rows and probed deliveries_endpoint_due
// once per endpoint (17× the time of a claim with 1 endpoint at 5,000).
func TestClaimReadsOnlyEndpointsWithPendingDeliveries(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	ctx := context.Background()
	manyEndpoints(t, b, 2000)
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
		SELECT 'ev' || i, 'auction.x', 'auction-excellence', now(), '{}' FROM generate_series(1, 100) i;
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, next_attempt_at)
		SELECT 'd' || i, 'ev' || i, CASE WHEN i <= 50 THEN 'whk_000007' ELSE 'whk_001500' END, 'auction.x', 'pending',
			now() - CASE WHEN i <= 50 THEN interval '1 minute' ELSE interval '-1 hour' END
		FROM generate_series(1, 100) i;
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status)
		SELECT 'h' || i, 'ev1', 'whk_' || lpad((i % 2000 + 1)::text, 6, '0'), 'auction.x', 'delivered' FROM generate_series(1, 20000) i;
		ANALYZE walhook.deliveries; ANALYZE walhook.endpoints`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	d := scaleDispatcher(t, pool, func(o *Options) { o.MaxInFlightPerEndpoint = 64 })
	var cs []claimed
	reads := readsOf(t, pool, func() {
		var err error
		if cs, _, err = d.claim(ctx, 64, &inflight{}); err != nil {
			t.Fatal(err)
		}
	})
	if len(cs) != 50 {
		t.Errorf("claimed %d, want the 50 due", len(cs))
	}
	if r := reads["endpoints"]; r.seqScans != 0 || r.idxRows > 100 { // 2 to walk, 50 for the claimed rows
		t.Errorf("a claim read endpoints with %d sequential scans (%d rows) and %d rows through indexes; 2 of 2,000 have pending deliveries",
			r.seqScans, r.seqRows, r.idxRows)
	}
	if r := reads["deliveries"]; r.seqScans != 0 || r.idxRows > 200 {
		t.Errorf("a claim read deliveries with %d sequential scans (%d rows) and %d rows through indexes", r.seqScans, r.seqRows, r.idxRows)
	}
}

// The fan-out's auction index passes every endpoint whose filters match
// an event, in id order, as matching each event against every endpoint
// did, and looks at the endpoints of the event's auction and those
// without an auction filter only.
func TestFanoutIndexMatchesAsEveryFilter(t *testing.T) {
	var eps []fanoutEndpoint
	filters := [][]string{nil, {"A1"}, {"A2"}, {"A1", "A2"}, {"A1", "A1"}, {""}, {"A3"}}
	types := [][]string{nil, {"auction.*"}, {"bid.placed"}, {"*"}}
	for i := range 3000 {
		eps = append(eps, fanoutEndpoint{id: fmt.Sprintf("whk_%05d", i),
			auctions: filters[i%len(filters)], events: types[i/len(filters)%len(types)]})
	}
	for i := range 2000 {
		eps = append(eps, fanoutEndpoint{id: fmt.Sprintf("whk_x%05d", i), auctions: []string{fmt.Sprintf("B%d", i)}})
	}
	s := newFanoutSet(eps)
	for _, ev := range []mapper.Event{
		{Type: "auction.closed", AuctionID: "A1"}, {Type: "bid.placed", AuctionID: "A2"},
		{Type: "auction.closed", AuctionID: ""}, {Type: "x.y", AuctionID: "A3"}, {Type: "auction.x", AuctionID: "B77"},
		{Type: "auction.x", AuctionID: "none"},
	} {
		var want, got []string
		for i := range eps {
			if eps[i].matches(&ev) {
				want = append(want, eps[i].id)
			}
		}
		looked := 0
		s.each(&ev, func(ep *fanoutEndpoint) {
			looked++
			if ep.matches(&ev) {
				got = append(got, ep.id)
			}
		})
		if !slices.Equal(got, want) {
			t.Errorf("event %s/%s: the index passed %d matching endpoints, want %d", ev.Type, ev.AuctionID, len(got), len(want))
		}
		if looked > 2000 {
			t.Errorf("event %s/%s: the fan-out looked at %d of %d endpoints", ev.Type, ev.AuctionID, looked, len(eps))
		}
	}
}

// An admin's change of one endpoint among thousands makes the next
// Append read that endpoint again, not all of them: with 2,000 endpoints
// every change read all 2,000 rows (at 5,000, 20 ms per change on the
// replication consumer's path, 5 times an Append of 100 events).
func TestEndpointChangeReadsOnlyTheChangedEndpoints(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	ctx := context.Background()
	manyEndpoints(t, b, 2000)
	pool := scalePool(t, b)
	d := scaleDispatcher(t, pool, nil)
	fanout := func() []fanoutEndpoint {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		eps, _, err := d.fanoutEndpoints(ctx, tx.Conn(), false)
		if err != nil {
			t.Fatal(err)
		}
		return eps
	}
	fanout()
	for _, change := range []string{
		`UPDATE walhook.endpoints SET events = '{auction.*,bid.*}' WHERE id = 'whk_000010'`,
		`UPDATE walhook.endpoints SET active = false WHERE id IN ('whk_000011', 'whk_001999')`,
		`INSERT INTO walhook.endpoints (id, url, auctions, secret) VALUES ('whk_000010a', 'https://n.example/', '{A10}', '` + obSecret + `')`,
	} {
		if _, err := b.pool.Exec(ctx, change); err != nil {
			t.Fatal(err)
		}
		var eps []fanoutEndpoint
		reads := readsOf(t, pool, func() { eps = fanout() })
		if r := reads["endpoints"]; r.seqRows+r.idxRows > 10 {
			t.Errorf("after %q the fan-out read %d endpoint rows (%d sequentially), want the changed ones", change, r.seqRows+r.idxRows, r.seqRows)
		}
		n := b.count(t, `SELECT count(*) FROM walhook.endpoints`)
		if len(eps) != n {
			t.Fatalf("after %q the fan-out has %d endpoints, the store %d", change, len(eps), n)
		}
	}
	got := fanout()
	if !slices.IsSortedFunc(got, func(a, b fanoutEndpoint) int { return strings.Compare(a.id, b.id) }) {
		t.Error("the endpoints are not in id order after the changes")
	}
	for _, e := range got {
		switch e.id {
		case "whk_000010":
			if !slices.Equal(e.events, []string{"auction.*", "bid.*"}) {
				t.Errorf("whk_000010's events are %v", e.events)
			}
		case "whk_000011", "whk_001999":
			if e.active {
				t.Errorf("%s is active", e.id)
			}
		}
	}
}

// queryCounter counts the statements a pool sends one by one (a round
// trip each) and those it sends in batches.
type queryCounter struct{ single, batched atomic.Int64 }

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.single.Add(1)
	return ctx
}
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (q *queryCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (q *queryCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {
	q.batched.Add(1)
}
func (q *queryCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// A sync of a few hundred static endpoints at start costs a few round
// trips, not two per endpoint: it holds the endpoints lock (every Append
// waits) while it upserts them, and with 300 endpoints and a store a
// millisecond away that was 600 round trips, over half a second.
func TestSyncOfManyStaticEndpointsTakesFewRoundTrips(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	cfg, err := pgxpool.ParseConfig(b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	var qc queryCounter
	cfg.ConnConfig.Tracer = &qc
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	d, err := New(pool, obTestOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	eps := make([]StaticEndpoint, 300)
	for i := range eps {
		eps[i] = StaticEndpoint{Name: fmt.Sprintf("t%03d", i), URL: fmt.Sprintf("https://t%d.example/", i),
			Secret: obSecret, Auctions: []string{fmt.Sprintf("A%d", i)}, Events: []string{"auction.*"}, Disabled: i%100 == 0}
	}
	for round := range 2 { // created, then configured again with other URLs
		if round == 1 {
			for i := range eps {
				eps[i].URL += "v2"
			}
		}
		qc.single.Store(0)
		if err := d.SyncStaticEndpoints(context.Background(), eps); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d statements one by one, %d in batches", round, qc.single.Load(), qc.batched.Load())
		if n := qc.single.Load(); n > 40 {
			t.Errorf("round %d: syncing 300 static endpoints sent %d statements one by one", round, n)
		}
		if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE static AND url LIKE '%example/' || $1`, map[int]string{0: "", 1: "v2"}[round]); n != 300 {
			t.Fatalf("round %d: %d static endpoints stored, want 300", round, n)
		}
		if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE NOT active`); n != 3 {
			t.Fatalf("round %d: %d disabled, want 3", round, n)
		}
	}
}

// A page of the endpoint list reads about a page of endpoints however
// deep it is: with no index on (created_at, id), and the cursor written
// as ($1 IS NULL OR …), every page read and sorted every endpoint (6
// times as long at 5,000 endpoints as at 100). The total is still
// counted over all of them.
func TestListEndpointsReadsAPage(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.endpoints (id, url, secret, created_at)
		SELECT 'whk_' || lpad(i::text, 6, '0'), 'https://t.example/', $1, now() - make_interval(secs => 3000 - i)
		FROM generate_series(1, 2000) i`, obSecret); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `ANALYZE walhook.endpoints`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	a := NewAdmin(pool, "walhook", scaleDispatcher(t, pool, nil))
	t.Cleanup(a.Close)
	var cursor string
	for page := 0; page < 16; page++ { // to 1,500 deep
		eps, next, total, err := a.ListEndpoints(ctx, ListOptions{Limit: 100, Cursor: cursor})
		if err != nil || len(eps) != 100 || total != 2000 {
			t.Fatalf("page %d: %d endpoints of %d, %v", page, len(eps), total, err)
		}
		cursor = next
	}
	reads := readsOf(t, pool, func() {
		eps, _, _, err := a.ListEndpoints(ctx, ListOptions{Limit: 100, Cursor: cursor})
		if err != nil || len(eps) != 100 || eps[0].ID != "whk_001601" {
			t.Fatalf("page 17: %d endpoints from %v, %v", len(eps), eps[0].ID, err)
		}
	})
	// The total's count may read the table once.
	if r := reads["endpoints"]; r.seqScans > 1 || r.idxRows > 300 {
		t.Errorf("a page 1,600 deep read endpoints with %d sequential scans (%d rows) and %d rows through indexes",
			r.seqScans, r.seqRows, r.idxRows)
	}
}

// With thousands of endpoints walhook_delivery_attempts_total had a
// series per endpoint and outcome; NoEndpointMetrics
// (delivery.endpoint_metrics: false) counts by outcome only.
func TestNoEndpointMetricsCountsByOutcomeOnly(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	reg := prometheus.NewRegistry()
	d, b := obSetup(t, func(o *Options) { o.Registerer = reg; o.NoEndpointMetrics = true })
	for i := range 20 {
		b.endpoint(t, fmt.Sprintf("whk_%02d", i), rc.URL, nil, nil, true)
	}
	obRun(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""))
	var series []string
	obWaitFor(t, "the 20 deliveries counted", func() bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		series = nil
		var n float64
		for _, mf := range mfs {
			if mf.GetName() != "walhook_delivery_attempts_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
				series = append(series, strings.Join(ls, ","))
				n += m.GetCounter().GetValue()
			}
		}
		return n == 20
	})
	if len(series) != 1 || series[0] != "outcome=delivered" {
		t.Fatalf("series %v, want one: outcome=delivered", series)
	}
}

// An endpoint at its in-flight limit, its requests hanging, with more due
// deliveries made every claim report it capped, and the loop claimed
// again at once, and again: about 5,000 claims a second that took
// nothing, with one such endpoint (and with hundreds of dead endpoints at
// their limits, all the time). It claims again once room frees up, or at
// the poll.
func TestEndpointAtItsLimitDoesNotMakeClaimsSpin(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) { o.Client.Timeout = time.Minute; o.MaxInFlightPerEndpoint = 2 })
	dead := newHangingReceiver(t)
	b.endpoint(t, "dead1", dead.URL, nil, nil, true)
	for i := range 8 {
		obAppend(t, d, cdc.LSN(100+i*10), obEvent("auction.bid_placed", "D"))
	}
	obRun(t, d)
	t.Cleanup(dead.release)
	obWaitFor(t, "the endpoint's requests", func() bool { h, _ := dead.counts(); return h >= 2 })
	time.Sleep(200 * time.Millisecond)
	before := d.claims.Load()
	time.Sleep(2 * time.Second)
	// The poll (50 ms here) claims 40 times in 2 s.
	if n := d.claims.Load() - before; n > 200 {
		t.Errorf("%d claims in 2 s while the only endpoint with due deliveries sat at its limit", n)
	}
}

// Events to a failing endpoint are stored pending (appends hand it
// nothing); they must not wake a claim each, which has nothing to take
// while the failing endpoints' share of the workers is in use: a dead
// endpoint that gets a steady stream of events made a claim per append.
func TestEventsToAFailingEndpointDoNotWakeClaims(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) {
		o.Client.Timeout = time.Minute
		o.MaxInFlightPerEndpoint = 2
		o.Workers = 2 // a failing share of 1
		o.PollInterval = time.Second
	})
	dead := newHangingReceiver(t)
	b.endpoint(t, "dead1", dead.URL, nil, nil, true)
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.endpoints SET failing_since = now()`); err != nil {
		t.Fatal(err)
	}
	obAppend(t, d, 100, obEvent("auction.bid_placed", "D"))
	obRun(t, d)
	t.Cleanup(dead.release)
	obWaitFor(t, "the endpoint's request", func() bool { h, _ := dead.counts(); return h >= 1 })
	before := d.claims.Load()
	for i := range 50 {
		obAppend(t, d, cdc.LSN(200+i*10), obEvent("auction.bid_placed", "D"))
	}
	if n := d.claims.Load() - before; n > 10 {
		t.Errorf("50 appends to a failing endpoint made %d claims", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'pending'`); n != 50 {
		t.Errorf("%d deliveries pending, want the 50", n)
	}
}

// A failing endpoint's due deliveries beyond the failing share are claimed
// as the share frees up, not at the next poll: a claim held back by the
// share left them behind as surely as one held back by an endpoint's
// limit, but the loop did not count it so, and with a failing share of 1
// an endpoint whose requests answered at once got one delivery per poll.
func TestFailingEndpointBacklogIsClaimedAsTheShareFrees(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) {
		o.Workers = 2 // a failing share of 1
		o.PollInterval = time.Hour
	})
	rcv := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return 500 })
	b.endpoint(t, "flaky", rcv.URL, nil, nil, true)
	for i := range 5 {
		obAppend(t, d, cdc.LSN(100+i*10), obEvent("auction.bid_placed", "D"))
	}
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.endpoints SET failing_since = now()`); err != nil {
		t.Fatal(err)
	}
	obRun(t, d)
	deadline := time.Now().Add(20 * time.Second)
	for rcv.n() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the failing endpoint's 5 due deliveries attempted in 20 s (the poll is an hour)", rcv.n())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
