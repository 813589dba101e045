package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/walhook/walhook/mapper"
)

// claimed is one delivery claimed by this process, with what it takes to
// render, sign and send it.
type claimed struct {
	id, endpointID, url string
	attempt             int
	secret, prevSecret  string
	prevSecretValid     bool
	event               mapper.Event
	test                bool      // a SendTest delivery: no retry, no health change
	at                  time.Time // when the claim (or Append) began
	handed              bool      // taken by Append, not by a claim
	// lease is the row's locked_until as this claim set it: it tells
	// this claim from any later one of the same row (the attempt count
	// does not, as a redeliver resets it), so an outcome, a 2xx or a
	// hand-back of this claim never lands on a later claim's row.
	lease time.Time
	// failing: the endpoint's failing_since was set when it was claimed
	// (claims); once started, whether it took a failing endpoint's place
	// among the workers (see failingShare).
	failing bool
}

// claimSQL claims due deliveries in one statement. It walks the active
// endpoints that have pending deliveries and, for each, takes its earliest
// due pending rows up to the endpoint's free in-flight slots in this
// process (LATERAL + LIMIT), so a backlog at one endpoint can never fill a
// claim batch and starve the others. Those endpoints are found by a skip
// scan of deliveries_endpoint_due (pend: one probe per such endpoint),
// not by reading every endpoint: with thousands of endpoints, most with
// nothing pending (their deliveries are handed over by the append and
// sent), a probe per endpoint made a claim 17 times as slow at 5,000
// endpoints as at one. FOR UPDATE SKIP LOCKED lets concurrent claimers (other workers,
// other processes) pass each other's rows instead of waiting.
//
// The in-flight counts come from the process ($3, $4: the endpoints with
// requests in flight and their free slots; others get $5), not from
// counting 'delivering' rows: every claimed row leaves a dead entry in a
// partial index on that status until vacuum, so a count there costs
// O(recent history) per claim and was most of the store's time under load.
//
// Failing endpoints (failing_since set: no 2xx since a failure, in any
// process) come last and take at most $7 of the batch, this process's
// room for them (failingShare): a healthy endpoint's due deliveries are
// claimed before the due retries of hundreds of dead ones, however much
// older those are, and the dead ones' deliveries do not fill the claim
// budget while they wait for a failing endpoint's worker.
//
// The claim bumps attempts, so a process that crashes mid-request has still
// spent that attempt (the lease rescue does not refund it).
const claimSQL = `
WITH RECURSIVE pend(endpoint_id) AS (
    (SELECT d.endpoint_id FROM {{schema}}.deliveries d WHERE d.status = 'pending'
     ORDER BY d.endpoint_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.endpoint_id FROM {{schema}}.deliveries d
            WHERE d.status = 'pending' AND d.endpoint_id > p.endpoint_id
            ORDER BY d.endpoint_id LIMIT 1)
    FROM pend p WHERE p.endpoint_id IS NOT NULL
), busy AS (
    SELECT * FROM unnest($3::text[], $4::int[]) AS b(endpoint_id, free)
), cand AS (
    SELECT x.id, x.next_attempt_at, e.failing_since IS NOT NULL AS failing
    FROM pend p JOIN {{schema}}.endpoints e ON e.id = p.endpoint_id
    LEFT JOIN busy b ON b.endpoint_id = e.id
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM {{schema}}.deliveries d
        WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT least(coalesce(b.free, $5), $6)
        FOR UPDATE OF d SKIP LOCKED
    ) x
    WHERE e.active AND coalesce(b.free, $5) > 0
), due AS (
    SELECT id, failing, next_attempt_at FROM (
        SELECT id, failing, next_attempt_at,
            row_number() OVER (PARTITION BY failing ORDER BY next_attempt_at) AS rn
        FROM cand) c
    WHERE NOT failing OR rn <= $7
    ORDER BY failing, next_attempt_at
    LIMIT $6
)
UPDATE {{schema}}.deliveries d
SET status = 'delivering', attempts = d.attempts + 1, locked_by = $1,
    locked_until = now() + make_interval(secs => $2), updated_at = now()
FROM due, {{schema}}.events ev, {{schema}}.endpoints e
WHERE d.id = due.id AND ev.id = d.event_id AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, d.attempts, e.url, e.secret, coalesce(e.previous_secret, ''),
    coalesce(e.previous_secret_until > now(), false),
    ev.id, ev.type, coalesce(ev.auction_id, ''), coalesce(ev.domain, ''), ev.envelope,
    ev.occurred_at, ev.data::text, coalesce(ev.table_name, ''), coalesce(ev.position, 0), d.locked_until,
    e.failing_since IS NOT NULL`

// inflight counts the deliveries this process holds (in flight or waiting
// for a worker) per endpoint and in all. It is also where Append takes
// deliveries for this process's workers directly (reserve, handoff) while
// a claim loop runs.
//
// Claims and handoffs have budgets of their own. Claims count only what
// was claimed (limit per endpoint, max in all): a queue full of handed-over
// backlog never stops retries and other processes' leftovers from being
// claimed. Handoffs count everything held (handLimit, handMax), a larger
// budget: the more an Append may hand over, the fewer and larger the
// Appends, and the less often the workers wait for one.
//
// A claim reads the counts once, before its statement; an Append that
// reserves meanwhile can push an endpoint a little past its limit. That
// only lengthens the queue: requests in flight are capped where they
// start, and a delivery that waits too long is handed back.
type inflight struct {
	mu sync.Mutex
	n  map[string]int // held per endpoint, claimed and handed
	nc map[string]int // of them, claimed
	// limit is the most one endpoint may hold by claims; zero means
	// MaxInFlightPerEndpoint.
	limit int
	// failing: endpoints whose last attempt here failed, or that a claim
	// found failing in the store, and when that was last seen. Appends
	// hand them nothing, and their deliveries take at most failingShare
	// of the workers. An entry goes with a 2xx, with a claim that finds
	// the endpoint healthy, or after failingForget without news.
	failing map[string]time.Time

	// The rest is set while a claim loop runs (open).
	open      bool
	total     int            // held in all
	claimed   int            // of them, claimed
	max       int            // the most held by claims
	handLimit int            // the most one endpoint may hold for a handoff
	handMax   int            // the most held in all for a handoff
	handed    []claimed      // committed by Append, not yet queued
	signal    chan struct{}  // wakes the claim loop for handed
	freed     chan struct{}  // signalled when held deliveries are let go
	appends   sync.WaitGroup // Appends between reserve and handoff
}

// add changes the endpoint's count by delta, for deliveries handed over
// by Append (handed) or claimed, and returns the new count.
func (f *inflight) add(endpointID string, delta int, handed bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addLocked(endpointID, delta, handed)
}

func (f *inflight) addLocked(endpointID string, delta int, handed bool) int {
	if f.n == nil {
		f.n, f.nc = map[string]int{}, map[string]int{}
	}
	f.total += delta
	if delta < 0 && f.freed != nil {
		select {
		case f.freed <- struct{}{}:
		default:
		}
	}
	if !handed {
		f.claimed += delta
		bump(f.nc, endpointID, delta)
	}
	return bump(f.n, endpointID, delta)
}

// bump adds delta to m[key], deleting it at zero, and returns the sum.
func bump(m map[string]int, key string, delta int) int {
	n := m[key] + delta
	if n <= 0 {
		delete(m, key)
	} else {
		m[key] = n
	}
	return n
}

// heldByClaims returns how many claimed deliveries are held.
func (f *inflight) heldByClaims() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.claimed
}

// setFailing notes whether the endpoint is failing, as of now.
func (f *inflight) setFailing(endpointID string, failing bool, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !failing {
		delete(f.failing, endpointID)
		return
	}
	if f.failing == nil {
		f.failing = map[string]time.Time{}
	}
	f.failing[endpointID] = now
}

// isFailing reports whether the endpoint is noted failing.
func (f *inflight) isFailing(endpointID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.failing[endpointID]
	return ok
}

// failingRoom returns how many deliveries to failing endpoints a claim of
// n may take: share less those held, or n when no claim loop runs (a
// claim outside it, in tests).
func (f *inflight) failingRoom(share, n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.open {
		return n
	}
	held := 0
	for id := range f.failing {
		held += f.n[id]
	}
	return max(share-held, 0)
}

// forgetFailing drops the failing notes last seen before t: an endpoint
// deleted, disabled or no longer sent to leaves no note behind for good.
func (f *inflight) forgetFailing(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, at := range f.failing {
		if at.Before(t) {
			delete(f.failing, id)
		}
	}
}

// held returns how many deliveries are held in all.
func (f *inflight) held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total
}

// free returns the endpoints holding claimed deliveries and their free
// claim slots under limit.
func (f *inflight) free(limit int) (ids []string, free []int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, n := range f.nc {
		ids = append(ids, id)
		free = append(free, int32(max(limit-n, 0)))
	}
	return ids, free
}

// reservation is an Append's claim on room in the claim loop's queue.
type reservation struct {
	f  *inflight
	by map[string]int
}

// reserve opens a reservation, or returns nil when no claim loop runs.
// Every non-nil reservation must be finished with handoff.
func (f *inflight) reserve() *reservation {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.open {
		return nil
	}
	f.appends.Add(1)
	return &reservation{f: f}
}

// take reserves one delivery to endpointID if there is room.
func (r *reservation) take(endpointID string) bool {
	if r == nil {
		return false
	}
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.open || f.total >= f.handMax || f.n[endpointID] >= f.handLimit {
		return false
	}
	if _, ok := f.failing[endpointID]; ok {
		// Stored pending: claims take a failing endpoint's deliveries
		// within its share, after the healthy endpoints'.
		return false
	}
	f.addLocked(endpointID, 1, true)
	if r.by == nil {
		r.by = map[string]int{}
	}
	r.by[endpointID]++
	return true
}

// failing reports whether the claim loop notes endpointID failing (false
// when no claim loop runs).
func (r *reservation) failing(endpointID string) bool {
	return r != nil && r.f.isFailing(endpointID)
}

// handoff gives the claim loop the reserved deliveries that were stored
// as claimed by this process (cs, a subset of what was taken: a replayed
// delivery already in the store is not), and returns the rest of the
// reservation. With the loop gone, cs stays claimed in the store until
// Run releases it, which waits for every open reservation.
func (r *reservation) handoff(cs []claimed) {
	if r == nil {
		return
	}
	f := r.f
	f.mu.Lock()
	for _, c := range cs {
		r.by[c.endpointID]--
	}
	for id, k := range r.by {
		if k > 0 {
			f.addLocked(id, -k, true)
		}
	}
	if f.open && len(cs) > 0 {
		f.handed = append(f.handed, cs...)
		select {
		case f.signal <- struct{}{}:
		default:
		}
	}
	f.mu.Unlock()
	f.appends.Done()
}

// start opens the counts for a claim loop: claims may hold limit per
// endpoint and maxHeld in all, handoffs handLimit and handMax.
func (f *inflight) start(limit, maxHeld, handLimit, handMax int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limit, f.max, f.open = limit, maxHeld, true
	f.handLimit, f.handMax = max(handLimit, limit), max(handMax, maxHeld)
	f.signal = make(chan struct{}, 1)
	f.freed = make(chan struct{}, 1)
}

// room returns how many more deliveries an Append could hand over now:
// the room in all, and at most what the fullest endpoint has left (the
// endpoints of the next events are not known yet, so this errs low), and
// the most it can ever be; zero when no claim loop runs.
func (f *inflight) room() (room, most int, freed <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.open {
		return 0, 0, nil
	}
	fullest := 0
	for _, n := range f.n {
		fullest = max(fullest, n)
	}
	most = min(f.handMax, f.handLimit)
	return max(min(f.handMax-f.total, f.handLimit-fullest), 0), most, f.freed
}

// takeHanded returns what Appends handed over since the last call.
func (f *inflight) takeHanded() []claimed {
	f.mu.Lock()
	defer f.mu.Unlock()
	cs := f.handed
	f.handed = nil
	return cs
}

// stop closes the counts to new reservations and waits for the open ones,
// so that a release after it sees every delivery stored as claimed by
// this process.
func (f *inflight) stop() {
	f.mu.Lock()
	f.open = false // handoff queues nothing from now on
	f.mu.Unlock()
	f.appends.Wait()
	f.mu.Lock()
	f.handed = nil
	f.n, f.nc, f.total, f.claimed = nil, nil, 0, 0
	f.failing = nil
	f.mu.Unlock()
}

// indexPlans makes the planner use index nested loops for the statement
// that follows in its transaction. Claim and record touch a few rows of
// tables that grow from empty to millions while walhook runs; their
// prepared statements' generic plans are made early, when the store is
// nearly empty and a sequential scan looks cheapest, and are kept until
// the next ANALYZE. A hash join over a sequential scan of deliveries per
// claim made throughput fall as the outbox grew; these plans are right at
// every size.
const indexPlans = `SELECT set_config('enable_seqscan', 'off', true),
	set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)`

// queryRowIndexPlans runs sql (schema already substituted) under
// indexPlans, in a transaction of its own and one round trip, and scans
// its one row. On an error the connection is left in an aborted
// transaction; pgxpool closes such a connection instead of reusing it.
func queryRowIndexPlans(ctx context.Context, pool *pgxpool.Pool, sql string, scan func(pgx.Row) error, args ...any) error {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(indexPlans)
	b.Queue(sql, args...).QueryRow(scan)
	b.Queue("COMMIT")
	return pool.SendBatch(ctx, b).Close()
}

// claim claims up to n due deliveries, at most the free in-flight slots of
// each endpoint (busy: this process's counts), in one round trip. capped
// reports whether some endpoint's free slots, or the failing endpoints'
// share, ran out in this claim (it may have due work the claim could not
// take).
func (d *Dispatcher) claim(ctx context.Context, n int, busy *inflight) (cs []claimed, capped bool, err error) {
	perEndpoint := busy.limit
	if perEndpoint <= 0 {
		perEndpoint = d.opts.MaxInFlightPerEndpoint
	}
	ids, free := busy.free(perEndpoint)
	failRoom := busy.failingRoom(d.failingShare(), n)
	d.claims.Add(1)
	at := time.Now()
	// A claim lost in a store crash before its WAL flush only undoes the
	// lease: the delivery is pending again and is sent (again, with the
	// same webhook id), which at-least-once allows.
	prelude := []string{"BEGIN", "SET LOCAL synchronous_commit = off", indexPlans}
	b := &pgx.Batch{}
	for _, sql := range prelude {
		b.Queue(sql)
	}
	b.Queue(d.q(claimSQL), d.opts.InstanceID, d.opts.Lease.Seconds(), ids, free, perEndpoint, n, failRoom)
	b.Queue("COMMIT")
	br := d.pool.SendBatch(ctx, b)
	err = func() error {
		for range prelude {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if cs, err = pgx.CollectRows(rows, scanClaimed); err != nil {
			return err
		}
		_, err = br.Exec()
		return err
	}()
	// On an error the connection is left in an aborted transaction;
	// pgxpool closes such a connection instead of reusing it.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, false, fmt.Errorf("claim deliveries: %w", err)
	}
	for i := range cs {
		cs[i].at = at
	}
	limit := make(map[string]int, len(ids))
	for i, id := range ids {
		limit[id] = int(free[i])
		capped = capped || free[i] == 0
	}
	got := make(map[string]int)
	failing := 0
	for _, c := range cs {
		got[c.endpointID]++
		if c.failing {
			failing++
		}
	}
	// The failing endpoints' share stopped the claim as an endpoint's
	// limit does: their due deliveries beyond it wait for room, and are
	// claimed once it frees up, not at the poll.
	capped = capped || (failRoom < n && failing >= failRoom)
	for id, k := range got {
		l, ok := limit[id]
		if !ok {
			l = perEndpoint
		}
		capped = capped || k >= l
	}
	return cs, capped, nil
}

func scanClaimed(r pgx.CollectableRow) (claimed, error) {
	var c claimed
	var env, data string
	err := r.Scan(&c.id, &c.endpointID, &c.attempt, &c.url, &c.secret, &c.prevSecret, &c.prevSecretValid,
		&c.event.ID, &c.event.Type, &c.event.AuctionID, &c.event.Domain, &env,
		&c.event.OccurredAt, &data, &c.event.Table, &c.event.Position, &c.lease, &c.failing)
	c.event.Envelope = mapper.Envelope(env)
	c.event.Data = []byte(data)
	c.event.OccurredAt = c.event.OccurredAt.UTC()
	return c, err
}

// releaseTimeout bounds the release of claimed deliveries when Run stops.
const releaseTimeout = 5 * time.Second

// Run delivers until ctx is cancelled: the claim loop and its workers, the
// LISTEN connection that wakes it, and the maintenance loop (lease rescue,
// retention, gauges). On cancel it stops claiming, lets attempts in flight
// finish (each bounded by the attempt timeout), releases anything still
// claimed by this process and returns nil.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.log.Info("dispatcher started", slog.String("instance", d.opts.InstanceID),
		slog.Int("workers", d.opts.Workers), slog.Int("max_in_flight_per_endpoint", d.opts.MaxInFlightPerEndpoint))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.listen(gctx) })
	g.Go(func() error { return d.maintain(gctx) })
	g.Go(func() error { return d.claimLoop(gctx) })
	err := g.Wait()
	// No Append hands deliveries over from now on, and those that took
	// some have stored them: the release below sees them all.
	d.hold.stop()
	// Release what this process still holds (claims whose outcome could
	// not be recorded, deliveries that never got a worker), so other
	// processes need not wait for the lease. Bounded so that a store that
	// does not answer keeps the stop within a 30 s grace period (the
	// lease rescue lets the rows go then).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if n, rerr := d.release(rctx); rerr != nil {
		d.log.Warn("release claimed deliveries", slog.Any("error", rerr))
	} else if n > 0 {
		d.log.Info("released claimed deliveries", slog.Int64("count", n))
	}
	d.client.CloseIdleConnections()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("dispatcher: %w", err)
	}
	d.log.Info("dispatcher stopped", slog.String("instance", d.opts.InstanceID))
	return nil
}

// noteUnrecorded remembers that c's attempt was made but its outcome could
// not be written, for release at stop. Notes whose lease has passed are
// dropped (the rescue has let those rows go), so a store that fails often
// does not make the notes grow.
func (d *Dispatcher) noteUnrecorded(c claimed) {
	now := time.Now()
	d.unrecorded.Range(func(k, v any) bool {
		if v.(time.Time).Before(now) {
			d.unrecorded.CompareAndDelete(k, v)
		}
		return true
	})
	d.unrecorded.Store(c.id, c.lease)
}

// release puts this process's claimed deliveries back to pending and
// refunds the attempt of those never sent; one whose attempt was made but
// whose outcome could not be written (d.unrecorded) keeps it counted, as
// the lease rescue would. A test send (SendTest) is left to the API
// request that makes it, which records its outcome: pending, it would be
// claimed and sent again as an ordinary, retried delivery.
func (d *Dispatcher) release(ctx context.Context) (int64, error) {
	var ids []string
	var leases []time.Time
	d.unrecorded.Range(func(k, v any) bool {
		ids, leases = append(ids, k.(string)), append(leases, v.(time.Time))
		return true
	})
	tag, err := d.pool.Exec(ctx, d.q(`UPDATE {{schema}}.deliveries
		SET status = 'pending', locked_by = NULL, locked_until = NULL, updated_at = now(),
		    attempts = CASE WHEN (id, locked_until) IN (SELECT * FROM unnest($2::text[], $3::timestamptz[]))
		                    THEN attempts ELSE greatest(attempts - 1, 0) END
		WHERE status = 'delivering' AND locked_by = $1 AND NOT `+isTestSend), d.opts.InstanceID, ids, leases)
	return tag.RowsAffected(), err
}

// releaseSQL gives a claim back as status $2 with its attempt refunded;
// callers add the WHERE.
// A delivery dropped as skipped because its endpoint was noted disabled
// goes back pending if the endpoint is active again (a quick re-enable):
// claims pass pending deliveries of inactive endpoints by, and the
// maintenance sweep skips them.
const releaseSQL = `UPDATE {{schema}}.deliveries
	SET status = CASE WHEN $2 = 'skipped' AND coalesce((SELECT e.active FROM {{schema}}.endpoints e WHERE e.id = endpoint_id), false)
	                  THEN 'pending' ELSE $2 END,
	    attempts = greatest(attempts - 1, 0), locked_by = NULL, locked_until = NULL, updated_at = now()
	`

// queued is a claimed delivery waiting for a free worker.
type queued struct {
	c  claimed
	at time.Time // when it was queued
}

// claimResult is what a claim running beside the loop hands back.
type claimResult struct {
	cs     []claimed
	capped bool
	n      int // what was asked for
	err    error
}

// prefetch returns how many deliveries this process may hold beyond its
// busy workers (claims by claims, handoffs by Append handing over its
// deliveries, the latter counting both), and how long one may wait for a
// worker.
//
// Held deliveries let a worker that finishes start the next one at once,
// while the claim or the Append that refills them runs beside the
// requests: without them every worker waited a round trip per batch, and
// at saturation that wait, not the store or HTTP, set the pace. Claims
// hold up to a batch (BatchSize, at most Workers) beyond the workers, so
// processes sharing a store do not hoard each other's work. Handoffs hold
// up to handoffPerWorker per worker: the replication consumer hands a
// backlog over as room frees up, and the larger that room, the fewer and
// larger its Appends and the less the workers wait for one.
//
// A held delivery is leased like one in flight, so it must start early
// enough to finish within the lease: it waits at most Lease minus the
// attempt timeout minus a margin, and is handed back (pending, attempt
// refunded) if its endpoint stays at its cap that long. With a lease too
// short for that, nothing is held beyond the workers.
func (d *Dispatcher) prefetch() (claims, handoffs int, maxWait time.Duration) {
	maxWait = d.opts.Lease - d.opts.Client.Timeout - prefetchMargin
	if maxWait <= 0 {
		return 0, 0, 0
	}
	return min(d.opts.BatchSize, d.opts.Workers), handoffPerWorker * d.opts.Workers, maxWait
}

// handoffPerWorker sizes the queue of handed-over deliveries beyond the
// busy workers. Measured on the saturation bench (60,000-change backlogs,
// 32 workers, interleaved): 1 per worker left a fifth of the CPU idle
// waiting for the next Append; 8 per worker 6,500–6,900/s; 32 per worker
// 7,300–8,100/s, with each delivery's CPU down by a tenth (fewer, larger
// Appends and outcome batches) for 11 MiB more memory.
const handoffPerWorker = 32

// prefetchMargin is kept between the latest start of a held delivery and
// the end of its lease, beyond the attempt timeout.
const prefetchMargin = 5 * time.Second

// claimLoop keeps the workers fed. Claims run one at a time beside the
// loop; what they return waits in a queue and starts as soon as a worker
// is free and the delivery's endpoint is under its cap
// (MaxInFlightPerEndpoint requests in flight). Claims hold at most
// Workers + their prefetch, and each endpoint at most its cap plus its
// share of it; Appends hand over within a larger budget of their own (see
// prefetch and inflight), so one endpoint's backlog cannot crowd the
// queue.
//
// It claims at once on a wake-up (Append, Notify, NOTIFY from another
// process) and at every poll interval; when the last claim may have left
// due work behind (a full batch, or an endpoint at its limit), it claims
// again once a batch's worth of room (claimEvery) has freed up, or
// coalesceDelay after the first room did: at saturation one claim then
// serves many deliveries instead of one or two.
func (d *Dispatcher) claimLoop(ctx context.Context) error {
	var wg sync.WaitGroup
	rec := d.newRecorder()
	// Workers first, then the recorder: every success handed over is
	// written before Run releases what this process still holds (the
	// queue included: those were never sent, and get their attempt back).
	defer rec.close()
	defer wg.Wait()
	// Attempts in flight outlive ctx: graceful stop lets them finish
	// within the client's timeout instead of abandoning them mid-request.
	sendCtx := context.WithoutCancel(ctx)
	workers, perEndpoint := d.opts.Workers, d.opts.MaxInFlightPerEndpoint
	extra, handExtra, maxWait := d.prefetch()
	maxHeld := workers + extra
	held := &d.hold
	held.start(perEndpoint+min(perEndpoint, extra), maxHeld,
		perEndpoint+min(handoffPerWorker*perEndpoint, handExtra), workers+handExtra)
	claimEvery := max(1, min(d.opts.BatchSize, workers, perEndpoint)/2)

	var queue []queued
	running := 0
	runningBy := map[string]int{}
	type finished struct {
		endpointID string
		handed     bool
		failing    bool // it took a failing endpoint's place
		ok         bool // a 2xx
	}
	// Deliveries to failing endpoints take at most failShare workers, so
	// that however many endpoints hang or fail, healthy ones keep the
	// rest: the per-endpoint cap alone let four dead endpoints with a
	// backlog hold all 32 default workers for their timeouts.
	failShare := d.failingShare()
	runningFailing := 0
	done := make(chan finished, workers) // a finished attempt
	// A fixed set of worker goroutines, not one per attempt: a new
	// goroutine starts on a small stack and grew it on every attempt
	// (rendering and sending run deep), which cost a twentieth of
	// walhook's CPU at saturation. start hands an attempt over only while
	// running < workers, so the channel never holds more than there are
	// workers and start never waits. Closed before wg.Wait (defers run
	// last-registered first): the workers finish what they hold and exit.
	work := make(chan claimed, workers)
	defer close(work)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				res := d.deliverVia(sendCtx, c, rec, ctx)
				done <- finished{c.endpointID, c.handed, c.failing, res.OK()}
			}
		}()
	}
	results := make(chan claimResult, 1)
	claiming := false
	// A claim still running at stop has its rows released by Run, which
	// must not start before the claim has committed or failed.
	defer func() {
		if claiming {
			<-results
		}
	}()

	// start starts queued deliveries, in order, while workers are free
	// and their endpoints are under the cap; with sweep it also looks at
	// the rest of the queue, to hand back what waited too long and drop
	// what a disable made moot. Without sweep it stops at the first free
	// worker's worth, so a finished attempt costs O(1), not O(queue).
	start := func(sweep bool) {
		now := time.Now()
		var expired, skipped, stale []claimed
		kept := queue[:0]
		i := 0
		for ; i < len(queue) && (sweep || running < workers); i++ {
			q := queue[i]
			switch {
			case d.disabledSince(q.c.endpointID, q.c.at):
				// Disabled here after it was claimed: not sent, kept
				// skipped with the endpoint's other deliveries.
				skipped = append(skipped, q.c)
				held.add(q.c.endpointID, -1, q.c.handed)
			case d.changedSince(q.c.endpointID, q.c.at):
				// Its URL or secrets as claimed are out of date: claimed
				// again, it gets them as they are.
				stale = append(stale, q.c)
				held.add(q.c.endpointID, -1, q.c.handed)
			case maxWait > 0 && now.Sub(q.c.at) > maxWait:
				// Its lease began with its claim or Append (a slow Append
				// spends it too): started now, it might still be sending
				// when the lease ends and the rescue lets another process
				// send it as well.
				expired = append(expired, q.c)
				held.add(q.c.endpointID, -1, q.c.handed)
			case running < workers && runningBy[q.c.endpointID] < perEndpoint &&
				(runningFailing < failShare || !held.isFailing(q.c.endpointID)):
				running++
				runningBy[q.c.endpointID]++
				c := q.c
				c.failing = runningFailing < failShare && held.isFailing(c.endpointID)
				if c.failing {
					runningFailing++
				}
				via := "claim"
				if c.handed {
					via = "append"
				}
				d.metrics.started.WithLabelValues(via).Inc()
				work <- c
			default:
				kept = append(kept, q)
			}
		}
		// Close the gap the started and dropped ones left before queue[i:]
		// (none when kept is all that was looked at).
		switch {
		case len(kept) == 0:
			clear(queue[:i])
			queue = queue[i:]
		case len(kept) < i:
			n := len(kept) + copy(queue[len(kept):], queue[i:])
			clear(queue[n:])
			queue = queue[:n]
		}
		if len(skipped) > 0 {
			if _, err := d.releaseIDs(ctx, skipped, "skipped"); err != nil {
				d.log.Warn("skip deliveries of a disabled endpoint (the lease rescue will)",
					slog.Int("deliveries", len(skipped)), slog.Any("error", err))
			}
		}
		if len(stale) > 0 {
			if _, err := d.releaseIDs(ctx, stale, "pending"); err != nil {
				d.log.Warn("hand back deliveries claimed before their endpoint's URL or secret changed (the lease rescue will)",
					slog.Int("deliveries", len(stale)), slog.Any("error", err))
			} else {
				d.log.Debug("handed back deliveries claimed before their endpoint's URL or secret changed", slog.Int("deliveries", len(stale)))
			}
		}
		if len(expired) > 0 {
			n, err := d.releaseIDs(ctx, expired, "pending")
			if err != nil {
				d.log.Warn("hand back deliveries that waited too long for a worker (the lease rescue will)",
					slog.Int("deliveries", len(expired)), slog.Any("error", err))
			} else {
				d.log.Info("handed back deliveries that waited too long for a worker", slog.Int64("deliveries", n))
			}
		}
	}

	poll := time.NewTicker(d.opts.PollInterval)
	defer poll.Stop()
	// The whole queue is looked at for hand-backs at least every second
	// (start looks only as far as it starts deliveries), well inside the
	// margin a held delivery keeps before its lease runs out, whatever
	// the poll interval.
	sweep := time.NewTicker(min(d.opts.PollInterval, time.Second))
	defer sweep.Stop()
	var coalesce, retry <-chan time.Time
	errDelay := time.Duration(0)
	claimNow := true // claim on this pass
	left := true     // the last claim may have left due work behind
	woke := false    // a wake-up arrived while a claim was running
	roomNow := func() int {
		if maxWait <= 0 {
			// Nothing may wait for a worker: count the handed ones too.
			return maxHeld - held.held()
		}
		return maxHeld - held.heldByClaims()
	}
	// The room the last claim left: the room when it was sent less what
	// it took. Work left behind at an endpoint's limit is claimed again
	// once room has freed up since, not at once. Claiming again at once
	// while the room stayed as it was (an endpoint at its limit, its
	// requests hanging) ran claim after claim, about 5,000 a second, that
	// took nothing. It is counted from the claim's start, not its end: a
	// request that finished while the claim ran freed room the claim did
	// not see, and counted from the end, an endpoint whose last requests
	// finished then was never claimed from again until the poll.
	roomAfter, roomAtClaim := maxHeld, maxHeld
	for {
		room := roomNow()
		freed := room - roomAfter
		switch {
		case claiming || retry != nil || room <= 0:
		case claimNow || (left && freed >= claimEvery) || (left && freed > 0 && room == maxHeld):
			n := min(room, d.opts.BatchSize)
			claiming, claimNow, coalesce, roomAtClaim = true, false, nil, room
			go func() {
				cctx, cancel := context.WithTimeout(ctx, claimTimeout)
				defer cancel()
				cs, capped, err := d.claim(cctx, n, held)
				results <- claimResult{cs: cs, capped: capped, n: n, err: err}
			}()
		case left && freed > 0 && coalesce == nil:
			coalesce = time.After(coalesceDelay)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-results:
			claiming = false
			if r.err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				errDelay = min(max(2*errDelay, 100*time.Millisecond), 5*time.Second)
				if ok, held := d.logLimit.Allow("claim"); ok {
					d.log.Warn("claim failed, retrying", slog.Any("error", r.err), slog.Duration("in", errDelay), slog.Int("more_since_last_line", held))
				}
				retry = time.After(errDelay)
				continue
			}
			errDelay = 0
			if d.logLimit.Clear("claim") {
				d.log.Info("claims work again")
			}
			now := time.Now()
			for _, c := range r.cs {
				held.setFailing(c.endpointID, c.failing, now)
				held.add(c.endpointID, 1, false)
				queue = append(queue, queued{c: c, at: now})
			}
			start(false)
			// Due work may be left behind by a full batch, at an endpoint
			// whose limit stopped the claim, or by an Append the claim
			// did not see.
			full := len(r.cs) == r.n
			roomAfter = roomAtClaim - len(r.cs)
			left = full || r.capped || woke
			claimNow = full || woke
			woke = false
		case f := <-done:
			for more := true; more; {
				running--
				if runningBy[f.endpointID]--; runningBy[f.endpointID] <= 0 {
					delete(runningBy, f.endpointID)
				}
				held.add(f.endpointID, -1, f.handed)
				if f.failing {
					runningFailing--
				}
				held.setFailing(f.endpointID, !f.ok, time.Now())
				select {
				case f = <-done:
				default:
					more = false
				}
			}
			start(false)
		case <-held.signal:
			now := time.Now()
			for _, c := range held.takeHanded() {
				queue = append(queue, queued{c: c, at: now})
			}
			start(false)
		case <-coalesce:
			coalesce = nil
			claimNow = true
		case <-retry:
			retry = nil
			claimNow = true
		case <-d.wake:
			claimNow, left, woke = true, true, claiming
		case <-poll.C:
			claimNow, left, woke = true, true, claiming
		case <-sweep.C:
			// Hand back anything that has waited too long at a stuck
			// endpoint, even when no worker finishes.
			start(true)
			held.forgetFailing(time.Now().Add(-failingForget))
		}
	}
}

// failingShare is how many workers deliveries to failing endpoints may
// take at once: half of them (at least one).
func (d *Dispatcher) failingShare() int { return max(d.opts.Workers/2, 1) }

// failingForget: a failing note not renewed (by a failure here, or a
// claim that finds the endpoint failing) for this long is dropped.
const failingForget = 10 * time.Minute

// claimTimeout bounds one claim, and releaseIDs one release. Without a
// bound, a claim sent on a connection the network dropped without a word
// (a NAT or load balancer that forgot it; a link that drops every packet)
// waits for as long as TCP takes to give up, many minutes, and forever
// behind a middlebox that keeps the socket open: no claim ran meanwhile,
// so no retry was sent (TestRunStoreBlackholedWhileClaiming). Cut short,
// the connection is closed and the next claim takes another; a claim that
// committed unseen holds its rows until their lease ends and the rescue
// frees them.
const claimTimeout = 15 * time.Second

// coalesceDelay bounds how long freed room waits for more before the
// claim loop claims work that was left behind for it.
const coalesceDelay = 2 * time.Millisecond

// releaseIDs hands deliveries this process holds but never sent back as
// status (pending, or skipped), refunding the attempt their claim counted.
// Each is released only while it is still the claim this process made
// (its lease), not a later claim of the same row.
//
// A release as skipped reads whether each endpoint is active again
// (releaseSQL) under a KEY SHARE lock of the endpoint rows, taken in id
// order before the update and held until its commit, which a re-enable
// (UpdateEndpoint, SyncStaticEndpoints: both lock the row FOR UPDATE
// first) waits for: the update then either sees the re-enable, or
// commits its skipped rows before the re-enable does, so a recover after
// the re-enable finds them. Read in the update's own snapshot, taken
// before a re-enable committed, a release that committed after the
// recover had run left its delivery skipped for good.
func (d *Dispatcher) releaseIDs(ctx context.Context, cs []claimed, status string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	ids := make([]string, len(cs))
	leases := make([]time.Time, len(cs))
	for i, c := range cs {
		ids[i], leases[i] = c.id, c.lease
	}
	release := d.q(releaseSQL + `WHERE locked_by = $1
		AND (id, locked_until) IN (SELECT * FROM unnest($3::text[], $4::timestamptz[]))`)
	if status != "skipped" {
		tag, err := d.pool.Exec(ctx, release, d.opts.InstanceID, status, ids, leases)
		return tag.RowsAffected(), err
	}
	eps := make([]string, 0, len(cs))
	for _, c := range cs {
		if !slices.Contains(eps, c.endpointID) {
			eps = append(eps, c.endpointID)
		}
	}
	var n int64
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(d.q(`SELECT FROM {{schema}}.endpoints WHERE id = ANY($1::text[]) ORDER BY id FOR KEY SHARE`), eps)
	b.Queue(release, d.opts.InstanceID, status, ids, leases).Exec(func(tag pgconn.CommandTag) error {
		n = tag.RowsAffected()
		return nil
	})
	b.Queue("COMMIT")
	// On an error the connection is left in an aborted transaction;
	// pgxpool closes such a connection instead of reusing it.
	err := d.pool.SendBatch(ctx, b).Close()
	return n, err
}

// listen holds a LISTEN connection on the schema's channel and turns each
// notification into an in-process wake-up. A lost connection is retried
// with backoff; polling covers the gap.
func (d *Dispatcher) listen(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		err := d.listenOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if ok, held := d.logLimit.Allow("listen"); ok {
			d.log.Warn("listen connection lost, polling until it is back", slog.Any("error", err), slog.Duration("retry_in", backoff),
				slog.Int("more_since_last_line", held))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (d *Dispatcher) listenOnce(ctx context.Context) error {
	actx, acancel := context.WithTimeout(ctx, claimTimeout)
	conn, err := d.pool.Acquire(actx)
	acancel()
	if err != nil {
		return err
	}
	// The connection leaves the pool for good: a pooled connection must not
	// keep a LISTEN registration for its next user.
	pc := conn.Hijack()
	defer pc.Close(context.WithoutCancel(ctx))
	lctx, lcancel := context.WithTimeout(ctx, claimTimeout)
	_, err = pc.Exec(lctx, "LISTEN "+quoteIdent(d.channel))
	lcancel()
	if err != nil {
		return err
	}
	// A URL or secret change announced while no LISTEN was up is not
	// known: every delivery claimed before now is handed back unstarted.
	if d.listened.Swap(true) {
		d.relisten.Store(time.Now().UnixNano())
	}
	// Notifications are read from here on while the catch-up runs on a
	// connection of its own: a change announced during a slow catch-up
	// is known at once. (When the notifications waited for the catch-up,
	// a delivery claimed meanwhile with the old URL was sent to it.)
	lctx, cancel := context.WithCancelCause(ctx)
	caught := make(chan struct{})
	defer func() {
		cancel(nil)
		<-caught
	}()
	go func() {
		defer close(caught)
		if err := d.catchUp(lctx); err != nil {
			cancel(fmt.Errorf("listen catch-up: %w", err))
			return
		}
		// A notification may have been sent before LISTEN took effect.
		d.Notify()
	}()
	for {
		// Quiet for listenCheck, the connection is asked whether it is
		// still there: one the network dropped without a word (a NAT or
		// load balancer that forgot it) delivers no notification, ever,
		// and was kept for good, while another process's endpoint
		// changes went unnoticed (TestRunListensAgainAfterTheStoreIsBlackholed).
		// A read deadline, not a context: a timeout that cancels a
		// context sends the server a cancel request, which may land on
		// the check.
		_ = pc.PgConn().Conn().SetReadDeadline(time.Now().Add(listenCheck))
		n, err := pc.WaitForNotification(lctx)
		_ = pc.PgConn().Conn().SetReadDeadline(time.Time{})
		if err != nil && pgconn.Timeout(err) && lctx.Err() == nil {
			pctx, pcancel := context.WithTimeout(lctx, listenPing)
			err = pc.Ping(pctx)
			pcancel()
			if err == nil {
				continue
			}
			err = fmt.Errorf("the listen connection does not answer: %w", err)
		}
		if err != nil {
			if cause := context.Cause(lctx); cause != nil && ctx.Err() == nil {
				return cause
			}
			return err
		}
		if id, ok := strings.CutPrefix(n.Payload, endpointOffPayload); ok {
			d.noteDisabled(id)
		} else if id, ok := strings.CutPrefix(n.Payload, endpointChangedPayload); ok {
			d.noteChanged(id)
		}
		d.Notify()
	}
}

// listenCheck is how long the LISTEN connection may be quiet before it is
// checked (see listenOnce), and listenPing how long that check waits.
const (
	listenCheck = 20 * time.Second
	listenPing  = 10 * time.Second
)

// catchUp notes the endpoints disabled or deleted within a lease (as long
// as this process may hold a delivery) as if announced: notifications are
// not kept for a listener that was away.
func (d *Dispatcher) catchUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, maintainStepTimeout)
	defer cancel()
	rows, err := d.pool.Query(ctx, d.q(`SELECT id FROM {{schema}}.endpoints WHERE NOT active AND disabled_at > now() - make_interval(secs => $1)
		UNION SELECT id FROM {{schema}}.endpoints_deleted WHERE deleted_at > now() - make_interval(secs => $1)`), d.opts.Lease.Seconds())
	if err != nil {
		return err
	}
	off, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, id := range off {
		d.noteDisabled(id)
	}
	return nil
}
