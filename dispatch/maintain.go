package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// retentionBatch bounds one retention DELETE, so a large backlog of old
// rows is removed in short transactions that never hold many locks or
// block autovacuum for long.
const retentionBatch = 1000

// maintain runs the periodic store work: rescue expired leases, skip pending
// deliveries of disabled endpoints, refresh the outbox gauges, and delete
// rows past retention. Every step is safe to run in several processes at
// once.
func (d *Dispatcher) maintain(ctx context.Context) error {
	// Each step is bounded (maintainStepTimeout): one that waits on a
	// connection the network dropped would hold every later pass, the
	// lease rescue's included.
	step := func(f func(context.Context) error) error {
		sctx, cancel := context.WithTimeout(ctx, maintainStepTimeout)
		defer cancel()
		return f(sctx)
	}
	every := min(max(d.opts.Lease/4, 100*time.Millisecond), 15*time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	lastRetention, lastForget := time.Time{}, time.Now()
	var gauges gaugeRefresh
	for {
		var n int64
		if err := step(func(ctx context.Context) (err error) { n, err = d.rescue(ctx); return err }); err != nil {
			d.logMaintenance(ctx, "rescue expired leases", err)
		} else if n > 0 {
			d.log.Warn("rescued deliveries whose lease expired (a walhook process stopped or lost the store mid-attempt, or an attempt outlived its lease)", slog.Int64("count", n))
			d.Notify()
		}
		if err := step(func(ctx context.Context) error { _, err := d.skipDisabled(ctx); return err }); err != nil {
			d.logMaintenance(ctx, "skip deliveries of disabled endpoints", err)
		}
		if err := step(d.purgeTombstones); err != nil {
			d.logMaintenance(ctx, "delete deliveries of deleted endpoints", err)
		}
		if now := time.Now(); gauges.due(now) {
			err := step(d.updateGauges)
			gauges.at, gauges.took = now, time.Since(now)
			if err != nil {
				// A count that failed (the store away, a stall) says
				// nothing of the backlog: try again at the next tick.
				gauges.took = 0
				d.logMaintenance(ctx, "outbox gauges", err)
			}
		}
		if time.Since(lastForget) >= time.Minute {
			lastForget = time.Now()
			d.pruneNotes(lastForget)
			if err := step(d.forgetDeletedEndpoints); err != nil {
				d.logMaintenance(ctx, "remove the metrics of deleted endpoints", err)
			}
		}
		if d.opts.Retention > 0 && time.Since(lastRetention) >= time.Minute {
			lastRetention = time.Now()
			var more bool
			err := step(func(ctx context.Context) (err error) { n, more, err = d.deleteExpired(ctx, retentionPass); return err })
			if err != nil {
				d.logMaintenance(ctx, "retention", err)
			} else if n > 0 {
				d.log.Info("retention deleted old rows", slog.Int64("rows", n), slog.Bool("more", more))
			}
			if more {
				// Go on at the next tick, after the rescue has had its turn.
				lastRetention = time.Time{}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// maintainStepTimeout bounds one maintenance step (see maintain).
const maintainStepTimeout = 30 * time.Second

// logMaintenance logs a failed maintenance step: the first of a run, then
// at most one a minute (a store outage fails every step of every pass).
func (d *Dispatcher) logMaintenance(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	if ok, held := d.logLimit.Allow("maintain " + what); ok {
		d.log.Warn(what, slog.Any("error", err), slog.Int("more_since_last_line", held))
	}
}

// rescue puts deliveries back to pending whose claim outlived its lease:
// the process that claimed them crashed or lost its store connection. The
// attempt it spent stays counted, and the request may have reached the
// receiver; that is the at-least-once duplicate, with the same webhook id.
func (d *Dispatcher) rescue(ctx context.Context) (int64, error) {
	tag, err := d.pool.Exec(ctx, d.q(rescueSQL))
	return tag.RowsAffected(), err
}

// A test send is not retried: one whose process died before recording it
// ends failed. It passes over deliveries another transaction holds (SKIP
// LOCKED; their holder is changing them, and the next pass looks again):
// waiting for them in an order of its own, it could deadlock with a
// release of held deliveries or an outcome that changes several.
const rescueSQL = `UPDATE {{schema}}.deliveries
	SET status = CASE WHEN ` + isTestSend + ` THEN 'failed' ELSE 'pending' END,
	    last_error = CASE WHEN ` + isTestSend + ` THEN '` + testAbandoned + `' ELSE last_error END,
	    locked_by = NULL, locked_until = NULL, next_attempt_at = now(), updated_at = now()
	WHERE id IN (SELECT id FROM {{schema}}.deliveries WHERE status = 'delivering' AND locked_until < now() FOR UPDATE SKIP LOCKED)`

// skipDisabled marks pending deliveries of disabled endpoints skipped. The
// disable itself does this right after it commits; this sweep catches
// deliveries fanned out by an Append that read the endpoint just before
// another process disabled it, and a skip that failed or was cut short.
// It goes endpoint by endpoint through skipPending, so it never skips
// behind a re-enable.
func (d *Dispatcher) skipDisabled(ctx context.Context) (int64, error) {
	rows, err := d.pool.Query(ctx, d.q(disabledWithPendingSQL))
	if err != nil {
		return 0, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	var total int64
	for _, id := range ids {
		n, err := d.skipPending(ctx, id)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// disabledWithPendingSQL finds the disabled endpoints with pending
// deliveries, through the partial index on pending rows per endpoint.
const disabledWithPendingSQL = `SELECT e.id FROM {{schema}}.endpoints e
	WHERE NOT e.active AND EXISTS (SELECT 1 FROM {{schema}}.deliveries x WHERE x.endpoint_id = e.id AND x.status = 'pending')`

// tombstonePass bounds the deliveries of deleted endpoints one maintenance
// pass deletes, so retention and the other chores keep their turn.
const tombstonePass = 20 * skipBatch

// purgeTombstones deletes what deleted endpoints left (purgeDeleted), a
// bounded share per pass.
func (d *Dispatcher) purgeTombstones(ctx context.Context) error {
	rows, err := d.pool.Query(ctx, d.q(`SELECT id FROM {{schema}}.endpoints_deleted ORDER BY deleted_at LIMIT 100`))
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, id := range ids {
		done, n, err := d.purgeDeletedCount(ctx, id, tombstonePass)
		// Not done within the pass's rows: the rest is the next pass's.
		// Not done with rows to spare: rows others hold were left (SKIP
		// LOCKED), for the next pass, and the other tombstones go on.
		if err != nil || (!done && n >= tombstonePass) {
			return err
		}
	}
	return nil
}

// gaugesSQL counts the deliveries not finished and the age of the oldest
// one, leaving out the pending ones of deleted endpoints (never sent, and
// deleted over several passes: purgeTombstones). Each status is read through its own partial index, so the cost is
// O(unfinished), not O(history): the same count over status IN (…) was a
// sequential scan of every delivery kept for retention, every few seconds.
// It runs under indexPlans: with statistics that showed 10 % of 4,000,000
// deliveries pending (a dead endpoint's backlog), the planner chose a
// parallel sequential scan of the whole table instead (0.4 s a tick).
const gaugesSQL = `
SELECT coalesce(sum(n), 0), coalesce(extract(epoch FROM now() - min(oldest)), 0)::float8 FROM (
    SELECT count(*) AS n, min(created_at) AS oldest FROM {{schema}}.deliveries WHERE status = 'pending'
        AND endpoint_id NOT IN (SELECT id FROM {{schema}}.endpoints_deleted)
    UNION ALL
    SELECT count(*), min(created_at) FROM {{schema}}.deliveries WHERE status = 'delivering'
) s`

// gaugeSpacing spaces the outbox counts out: they cost in proportion to
// the backlog (gaugesSQL; 0.15 s for 400,000 pending), so a dead
// endpoint's backlog of millions would have them take a good part of a
// core in every process at every tick. They are counted again once
// gaugeSpacing times their last cost has passed (every tick while that
// is shorter), so counting takes at most 1/20 of one store connection.
const gaugeSpacing = 20

// gaugeRefresh is when the outbox counts last ran and what they took.
type gaugeRefresh struct {
	at   time.Time
	took time.Duration
}

func (g gaugeRefresh) due(now time.Time) bool {
	return now.Sub(g.at) >= min(g.took*gaugeSpacing, maxGaugeSpacing)
}

// maxGaugeSpacing bounds the time between two counts whatever they cost.
const maxGaugeSpacing = 5 * time.Minute

func (d *Dispatcher) updateGauges(ctx context.Context) error {
	var pending int64
	var age float64
	if err := queryRowIndexPlans(ctx, d.pool, d.q(gaugesSQL), func(row pgx.Row) error { return row.Scan(&pending, &age) }); err != nil {
		return err
	}
	d.metrics.pending.Set(float64(pending))
	var at int64
	if age > 0 {
		at = time.Now().Add(-time.Duration(age * float64(time.Second))).UnixNano()
	}
	d.metrics.oldestAt.Store(at)
	return nil
}

// retentionPass bounds the time one maintenance pass spends on
// retention: a large history (retention turned on or shortened, a store
// that was down for a while) is deleted over several passes, and the
// lease rescue, the skips and the gauges keep their turn in between.
const retentionPass = 2 * time.Second

// eventSweepRound is how often the sweep of events past retention starts
// again from the oldest event (see deleteExpired).
const eventSweepRound = time.Hour

// eventSweep is where the sweep of events past retention has got to.
type eventSweep struct {
	set   bool
	at    time.Time // created_at and id of the last event examined
	id    string
	round time.Time // when the sweep last started from the oldest event
}

// expiredDeliveriesSQL deletes a batch of finished deliveries past
// retention ($1 seconds, $2 rows) with their attempts, and the events
// they were the last deliveries of. It returns the deliveries and the
// events it deleted. The events are checked here, while their ids are at
// hand: the sweep of old events (expiredEventsSQL) passes each event
// once a round, and an event whose last delivery expires after that
// would otherwise wait for the next round.
//
// It passes over rows another transaction holds (SKIP LOCKED): a
// recover, a redeliver or another process's retention. Waiting for them
// could deadlock: a recover of a dead endpoint's failed deliveries past
// retention locks them in the order its plan reads them, this in
// updated_at order, and each could wait for a row the other held
// (PostgreSQL then aborts one; the recover's caller got the error). A row
// passed over is looked at again next pass.
const expiredDeliveriesSQL = `
WITH gone AS (
	DELETE FROM {{schema}}.deliveries WHERE id IN (
		SELECT id FROM {{schema}}.deliveries
		WHERE status IN ('delivered', 'failed', 'skipped') AND updated_at < now() - make_interval(secs => $1)
		LIMIT $2
		FOR UPDATE SKIP LOCKED)
	  AND status IN ('delivered', 'failed', 'skipped') AND updated_at < now() - make_interval(secs => $1)
	RETURNING id, event_id
), attempts AS (
	DELETE FROM {{schema}}.attempts a USING gone WHERE a.delivery_id = gone.id
), events AS (
	-- The deliveries deleted above are still visible to this statement.
	DELETE FROM {{schema}}.events ev WHERE ev.id IN (SELECT event_id FROM gone)
	  AND ev.created_at < now() - make_interval(secs => $1)
	  AND NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries x
		WHERE x.event_id = ev.id AND x.id NOT IN (SELECT id FROM gone))
	RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM events)`

// expiredEventsSQL examines the next $2 events past retention ($1
// seconds) after ($3, $4) in (created_at, id) order, deletes those no
// delivery refers to, and returns how many it deleted, how many it
// examined and the last one examined.
const expiredEventsSQL = `
WITH batch AS (
	SELECT ev.id, ev.created_at FROM {{schema}}.events ev
	WHERE ev.created_at < now() - make_interval(secs => $1)
	  AND ev.created_at >= $3 AND (ev.created_at, ev.id) > ($3, $4)
	ORDER BY ev.created_at, ev.id
	LIMIT $2
), gone AS (
	DELETE FROM {{schema}}.events WHERE id IN (
		SELECT b.id FROM batch b WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries x WHERE x.event_id = b.id))
	RETURNING id
), last AS (
	SELECT created_at, id FROM batch ORDER BY created_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch),
	(SELECT created_at FROM last), (SELECT id FROM last)`

// deleteExpired deletes finished deliveries with their attempts, and
// events no delivery refers to, older than Retention, in batches. It
// starts no batch after budget has passed (but always runs one of each
// kind) and says whether rows may be left.
//
// An event goes with the last of its deliveries to expire. The others
// (events that matched no endpoint, or whose deliveries went with a
// deleted endpoint) are found by a sweep of the events past retention,
// oldest first, that continues where it stopped and starts again from the
// oldest once every eventSweepRound: events past retention that
// deliveries still refer to (a dead endpoint's failed or skipped backlog,
// kept for retention from when it failed) are passed once a round, not
// read by every pass (a pass that walked them all read 100,000 events a
// minute for such a backlog). Each process sweeps on its own; an event
// whose deliveries went with a deleted endpoint after the sweep passed
// it may outlive retention by up to a round.
func (d *Dispatcher) deleteExpired(ctx context.Context, budget time.Duration) (total int64, more bool, err error) {
	deadline := time.Now().Add(budget)
	secs := d.opts.Retention.Seconds()
	// run runs one batch under indexPlans, as claims and outcomes: the
	// generic plan of these prepared statements joined a batch with a
	// sequential scan of attempts (the whole attempt log read for every
	// 1,000 deliveries), and picked sequential scans of deliveries and
	// events when a store had no statistics yet or only a few rows had
	// expired.
	run := func(sql string, scan func(pgx.Row) error, args ...any) error {
		if err := queryRowIndexPlans(ctx, d.pool, d.q(sql), scan, args...); err != nil {
			return fmt.Errorf("delete expired rows: %w", err)
		}
		return nil
	}
	for {
		var n, events int64
		if err := run(expiredDeliveriesSQL, func(r pgx.Row) error { return r.Scan(&n, &events) }, secs, retentionBatch); err != nil {
			return total, false, err
		}
		total += n + events
		if n < retentionBatch {
			break
		}
		if time.Now().After(deadline) {
			more = true
			break
		}
	}
	sw := &d.eventSweep
	for {
		if !sw.set {
			sw.set, sw.at, sw.id, sw.round = true, time.Time{}, "", time.Now()
		}
		from := sw.at
		if from.IsZero() {
			from = time.Unix(0, 0) // before any event walhook stored
		}
		var n, examined int64
		var at *time.Time // nil when nothing was examined
		var id *string
		if err := run(expiredEventsSQL, func(r pgx.Row) error { return r.Scan(&n, &examined, &at, &id) },
			secs, retentionBatch, from, sw.id); err != nil {
			return total, false, err
		}
		total += n
		if at != nil && id != nil {
			sw.at, sw.id = *at, *id
		}
		if examined < retentionBatch {
			// At the retention horizon: go on from here next time, or
			// from the oldest event once the round is over.
			if time.Since(sw.round) >= eventSweepRound {
				sw.set = false
			}
			break
		}
		if time.Now().After(deadline) {
			more = true
			break
		}
	}
	return total, more, nil
}
