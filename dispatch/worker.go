package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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
	test                bool // a SendTest delivery: no retry, no health change
}

// claimSQL claims due deliveries in one statement. It walks the active
// endpoints and, for each, takes its earliest due pending rows up to the
// endpoint's free in-flight slots in this process (LATERAL + LIMIT), so a
// backlog at one endpoint can never fill a claim batch and starve the
// others. FOR UPDATE SKIP LOCKED lets concurrent claimers (other workers,
// other processes) pass each other's rows instead of waiting.
//
// The in-flight counts come from the process ($3, $4: the endpoints with
// requests in flight and their free slots; others get $5), not from
// counting 'delivering' rows: every claimed row leaves a dead entry in a
// partial index on that status until vacuum, so a count there costs
// O(recent history) per claim and was most of the store's time under load.
//
// The claim bumps attempts, so a process that crashes mid-request has still
// spent that attempt (the lease rescue does not refund it).
const claimSQL = `
WITH busy AS (
    SELECT * FROM unnest($3::text[], $4::int[]) AS b(endpoint_id, free)
), due AS (
    SELECT x.id, x.next_attempt_at FROM {{schema}}.endpoints e
    LEFT JOIN busy b ON b.endpoint_id = e.id
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM {{schema}}.deliveries d
        WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT least(coalesce(b.free, $5), $6)
        FOR UPDATE OF d SKIP LOCKED
    ) x
    WHERE e.active AND coalesce(b.free, $5) > 0
    ORDER BY x.next_attempt_at
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
    ev.occurred_at, ev.data::text, coalesce(ev.table_name, ''), coalesce(ev.position, 0)`

// inflight counts this process's requests in flight per endpoint, for the
// per-endpoint cap. The claim loop adds, workers subtract.
type inflight struct {
	mu sync.Mutex
	n  map[string]int
}

// add changes the endpoint's count by delta and returns the new count.
func (f *inflight) add(endpointID string, delta int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil {
		f.n = map[string]int{}
	}
	n := f.n[endpointID] + delta
	if n <= 0 {
		delete(f.n, endpointID)
	} else {
		f.n[endpointID] = n
	}
	return n
}

// free returns the endpoints with requests in flight and their free slots
// under limit.
func (f *inflight) free(limit int) (ids []string, free []int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, n := range f.n {
		ids = append(ids, id)
		free = append(free, int32(max(limit-n, 0)))
	}
	return ids, free
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

// claim claims up to n due deliveries, at most the free in-flight slots of
// each endpoint (busy: this process's counts), in one round trip. capped
// reports whether some endpoint's free slots ran out in this claim (it may
// have due work the claim could not take).
func (d *Dispatcher) claim(ctx context.Context, n int, busy *inflight) (cs []claimed, capped bool, err error) {
	ids, free := busy.free(d.opts.MaxInFlightPerEndpoint)
	// A claim lost in a store crash before its WAL flush only undoes the
	// lease: the delivery is pending again and is sent (again, with the
	// same webhook id), which at-least-once allows.
	prelude := []string{"BEGIN", "SET LOCAL synchronous_commit = off", indexPlans}
	b := &pgx.Batch{}
	for _, sql := range prelude {
		b.Queue(sql)
	}
	b.Queue(d.q(claimSQL), d.opts.InstanceID, d.opts.Lease.Seconds(), ids, free, d.opts.MaxInFlightPerEndpoint, n)
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
	limit := make(map[string]int, len(ids))
	for i, id := range ids {
		limit[id] = int(free[i])
		capped = capped || free[i] == 0
	}
	got := make(map[string]int)
	for _, c := range cs {
		got[c.endpointID]++
	}
	for id, k := range got {
		l, ok := limit[id]
		if !ok {
			l = d.opts.MaxInFlightPerEndpoint
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
		&c.event.OccurredAt, &data, &c.event.Table, &c.event.Position)
	c.event.Envelope = mapper.Envelope(env)
	c.event.Data = []byte(data)
	c.event.OccurredAt = c.event.OccurredAt.UTC()
	return c, err
}

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
	// Release what this process still holds (claims whose outcome could
	// not be recorded), so other processes need not wait for the lease.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
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

// release puts this process's claimed deliveries back to pending and
// refunds the attempt that never happened.
func (d *Dispatcher) release(ctx context.Context) (int64, error) {
	tag, err := d.pool.Exec(ctx, d.q(`UPDATE {{schema}}.deliveries
		SET status = 'pending', attempts = greatest(attempts - 1, 0), locked_by = NULL, locked_until = NULL, updated_at = now()
		WHERE status = 'delivering' AND locked_by = $1`), d.opts.InstanceID)
	return tag.RowsAffected(), err
}

// claimLoop claims due deliveries for free workers and runs each in its
// own goroutine. It claims at once on a wake-up (Append, Notify, NOTIFY
// from another process), at every poll interval, and again right after a
// full batch. When workers finish while due work was left behind, it
// claims once a few have finished (claimEvery) or coalesceDelay after the
// first did: at saturation one claim then serves many deliveries instead
// of one or two, and the store's cost per delivery falls with the batch.
func (d *Dispatcher) claimLoop(ctx context.Context) error {
	var wg sync.WaitGroup
	rec := d.newRecorder()
	// Workers first, then the recorder: every success handed over is
	// written before Run releases what this process still holds.
	defer rec.close()
	defer wg.Wait()
	// Attempts in flight outlive ctx: graceful stop lets them finish
	// within the client's timeout instead of abandoning them mid-request.
	sendCtx := context.WithoutCancel(ctx)
	done := make(chan struct{}, d.opts.Workers)
	free := d.opts.Workers
	claimEvery := max(1, min(d.opts.BatchSize, d.opts.Workers, d.opts.MaxInFlightPerEndpoint)/2)
	var busy inflight
	poll := time.NewTicker(d.opts.PollInterval)
	defer poll.Stop()
	var coalesce <-chan time.Time // running while finished workers wait for company
	errDelay := time.Duration(0)
	claimNow := true // claim on this pass
	left := true     // the last claim may have left due work behind
	finished := 0    // workers finished since the last claim
	for {
		if claimNow && free > 0 {
			n := min(free, d.opts.BatchSize)
			cs, capped, err := d.claim(ctx, n, &busy)
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case err != nil:
				errDelay = min(max(2*errDelay, 100*time.Millisecond), 5*time.Second)
				d.log.Warn("claim failed, retrying", slog.Any("error", err), slog.Duration("in", errDelay))
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(errDelay):
				}
				continue
			}
			errDelay = 0
			free -= len(cs)
			finished, coalesce = 0, nil
			// Due work may be left behind by a full batch, or at an
			// endpoint whose cap stopped the claim.
			full := len(cs) == n
			left = full || capped
			for _, c := range cs {
				busy.add(c.endpointID, 1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					d.deliverVia(sendCtx, c, rec)
					busy.add(c.endpointID, -1)
					done <- struct{}{}
				}()
			}
			if full && free > 0 {
				continue
			}
		}
		claimNow = false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			free++
			finished++
			for drained := false; !drained; {
				select {
				case <-done:
					free++
					finished++
				default:
					drained = true
				}
			}
			switch {
			case !left:
				// Nothing was left behind: new work comes with a wake-up.
			case finished >= claimEvery || free == d.opts.Workers:
				claimNow = true
			case coalesce == nil:
				coalesce = time.After(coalesceDelay)
			}
		case <-coalesce:
			coalesce = nil
			claimNow = true
		case <-d.wake:
			claimNow, left = true, true
		case <-poll.C:
			claimNow, left = true, true
		}
	}
}

// coalesceDelay bounds how long finished workers wait for others before
// the claim loop claims work that was left behind for them.
const coalesceDelay = 2 * time.Millisecond

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
		d.log.Warn("listen connection lost, polling until it is back", slog.Any("error", err), slog.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (d *Dispatcher) listenOnce(ctx context.Context) error {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection leaves the pool for good: a pooled connection must not
	// keep a LISTEN registration for its next user.
	pc := conn.Hijack()
	defer pc.Close(context.WithoutCancel(ctx))
	if _, err := pc.Exec(ctx, "LISTEN "+quoteIdent(d.channel)); err != nil {
		return err
	}
	// A notification may have been sent before LISTEN took effect.
	d.Notify()
	for {
		if _, err := pc.WaitForNotification(ctx); err != nil {
			return err
		}
		d.Notify()
	}
}
