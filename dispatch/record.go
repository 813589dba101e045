package dispatch

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// maxRecordBatch bounds the successes written by one store transaction.
const maxRecordBatch = 512

// success is a 2xx attempt waiting to be written.
type success struct {
	c       claimed
	started time.Time
	res     Result
}

// recorder writes successful attempts in batches: a worker hands its 2xx
// over and is free for the next delivery at once; the recorder takes
// everything handed over since its last write and writes it as one store
// transaction (group commit). Under load that is one transaction for
// dozens of deliveries instead of one each; a lone success is written at
// once, without waiting for company.
//
// Until its batch commits, a delivered row stays 'delivering' and claimed
// by this process. If the write fails, or the process dies first, the
// lease rescue makes it pending again and it is sent once more with the
// same webhook id: at-least-once, never lost.
type recorder struct {
	d       *Dispatcher
	in      chan success
	done    chan struct{}
	closing atomic.Int64 // unix nanoseconds close began (0: running): retry briefly, the process is stopping
}

func (d *Dispatcher) newRecorder() *recorder {
	r := &recorder{d: d, in: make(chan success, 4*maxRecordBatch), done: make(chan struct{})}
	go r.loop()
	return r
}

// add hands a success over; it blocks only when the recorder is a full
// channel behind, which slows the workers down to the store's pace.
func (r *recorder) add(s success) { r.in <- s }

// close writes what was handed over and returns when it is written (or
// failed to be). No add may follow.
func (r *recorder) close() {
	r.closing.Store(time.Now().UnixNano())
	close(r.in)
	<-r.done
}

func (r *recorder) loop() {
	defer close(r.done)
	batch := make([]success, 0, maxRecordBatch)
	for s := range r.in {
		batch = append(batch[:0], s)
		// Wait a moment for company: a delivered row only stays claimed a
		// little longer (the receiver has it already), and under load one
		// statement then writes dozens of outcomes instead of a handful.
		wait := time.NewTimer(recordCoalesce)
	fill:
		for len(batch) < maxRecordBatch {
			select {
			case s, ok := <-r.in:
				if !ok {
					break fill
				}
				batch = append(batch, s)
			case <-wait.C:
				break fill
			}
		}
		wait.Stop()
		r.write(batch)
	}
}

// recordCoalesce is how long the recorder gathers successes before it
// writes them.
const recordCoalesce = 5 * time.Millisecond

// recordRetryFor is how long a failed write of successes is retried
// (a store restart), and recordRetryClosing the same while the process
// stops.
const (
	recordRetryFor     = 20 * time.Second
	recordRetryClosing = 2 * time.Second
)

// write records one batch, retrying a failed write with backoff for as
// long as a store restart takes (recordRetryFor), and only briefly while
// the process stops: a store hiccup should not turn a batch of successes
// into redeliveries. A write after a lease ended is harmless: the row
// still held by this claim is marked delivered (sparing a resend), one
// the rescue has let go is not touched (its attempt is only logged).
func (r *recorder) write(batch []success) {
	d := r.d
	deadline := time.Now().Add(recordRetryFor)
	// Once close has begun, nothing waits much longer than
	// recordRetryClosing (checked again at every try: a write that began
	// before the close is cut short too).
	bound := func() time.Time {
		if c := r.closing.Load(); c != 0 {
			if end := time.Unix(0, c).Add(recordRetryClosing); end.Before(deadline) {
				return end
			}
		}
		return deadline
	}
	var err error
	for delay := 50 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		// A try gets at least a second even past the deadline (the last
		// one), a fifth of that while closing: batches still queued at a
		// close get one short try each.
		least := time.Second
		if r.closing.Load() != 0 {
			least = 200 * time.Millisecond
		}
		// One try gets at most claimTimeout: a write sent on a connection
		// the network dropped is given up on while there is time left to
		// try again on another.
		ctx, cancel := context.WithTimeout(context.Background(), max(min(time.Until(bound()), claimTimeout), least))
		err = d.recordSuccesses(ctx, batch)
		cancel()
		if err == nil || time.Now().Add(delay).After(bound()) {
			break
		}
		time.Sleep(delay)
	}
	if err != nil {
		d.log.Error("record delivered attempts (they stay claimed; the lease rescue sends them again)",
			slog.Int("deliveries", len(batch)), slog.Any("error", err))
		for i := range batch {
			d.noteUnrecorded(batch[i].c)
		}
		return
	}
	for i := range batch {
		d.delivered(batch[i].c, batch[i].started, batch[i].res)
	}
}

// recordSuccessesSQL marks a batch delivered (only rows this process
// still holds), logs their attempts, and returns how many it marked: the
// others' lease passed to another process, or their endpoint was deleted
// (lostAttemptsSQL logs the first kind).
//
// "Still holds" is locked_by = $1 and the lease this claim set: only a
// claim (or Append) sets locked_by, and every move out of 'delivering'
// clears it; the lease tells this claim from a later one by this same
// process (the lease ran out mid-attempt, the rescue made the row pending
// and this process claimed it again), whose row an old outcome must not
// overwrite. The attempt count cannot tell them apart: a redeliver in
// between resets it. Saying status = 'delivering'
// as well would let the planner read the rows through deliveries_leased,
// a partial index on that status that holds a dead entry for every
// delivery claimed since the last vacuum, and join them in a loop: it did,
// and a 512-row batch took 100 ms instead of 5.
//
// Attempts are written only for the rows the update marked: the update
// waits for a concurrent delete of the endpoint's deliveries and then
// finds the row gone, where an attempt written regardless would outlive
// its delivery (nothing ever deletes it). The update returns each marked
// row's attempt, so no statement joins the batch with the marked rows: a
// join of two CTEs is a nested loop under indexPlans (hash and merge
// joins off), quadratic in the batch, and cost 20-30 % of end-to-end
// throughput when it was tried.
const recordSuccessesSQL = `
WITH o AS (
    SELECT * FROM unnest($2::text[], $3::int[], $4::timestamptz[], $5::int[], $6::int[], $7::text[], $8::int[], $9::timestamptz[])
        AS o(id, attempt, started_at, duration_ms, status_code, response_body, signed_by, lease)
), done AS (
    UPDATE {{schema}}.deliveries d SET status = 'delivered', locked_by = NULL, locked_until = NULL,
        last_status_code = o.status_code, last_error = NULL, last_duration_ms = o.duration_ms,
        delivered_at = now(), updated_at = now()
    FROM o
    WHERE d.id = o.id AND d.locked_by = $1 AND d.locked_until = o.lease
    RETURNING d.id, o.attempt, o.started_at, o.duration_ms, o.status_code, o.response_body, o.signed_by
), logged AS (
    INSERT INTO {{schema}}.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body, signed_by)
    SELECT id, attempt, started_at, duration_ms, status_code, NULL, response_body, signed_by FROM done
)
SELECT count(*) FROM done`

// lostAttemptsSQL logs the 2xx attempts of deliveries whose lease this
// process lost before it could mark them (the rescue made them pending
// again; they will be sent once more): the attempt happened and belongs
// in the delivery log, but only while its delivery exists. FOR KEY SHARE
// waits for a concurrent delete and then skips the deleted row. An
// attempt already logged (a retried write whose first commit went
// through) is not logged twice.
const lostAttemptsSQL = `
INSERT INTO {{schema}}.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body, signed_by)
SELECT o.id, o.attempt, o.started_at, o.duration_ms, o.status_code, NULL, o.response_body, o.signed_by
FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], $6::text[], $7::int[])
    AS o(id, attempt, started_at, duration_ms, status_code, response_body, signed_by)
WHERE o.id IN (SELECT id FROM {{schema}}.deliveries WHERE id = ANY($1) FOR KEY SHARE)
    AND NOT EXISTS (SELECT 1 FROM {{schema}}.attempts a
        WHERE a.delivery_id = o.id AND a.attempt = o.attempt AND a.started_at = o.started_at)`

// recordSuccesses writes a batch of 2xx attempts in one transaction and
// one round trip, committed with synchronous_commit off (see record for
// why that is safe for an outcome). Endpoint health is updated once per
// endpoint in the batch, throttled as in queueOutcome.
func (d *Dispatcher) recordSuccesses(ctx context.Context, batch []success) error {
	n := len(batch)
	ids := make([]string, n)
	attempt := make([]int32, n)
	started := make([]time.Time, n)
	dur := make([]int32, n)
	code := make([]int32, n)
	body := make([]*string, n)
	signed := make([]int32, n)
	leases := make([]time.Time, n)
	var endpoints []string
	for i := range batch {
		s := &batch[i]
		ids[i] = s.c.id
		attempt[i] = int32(s.c.attempt)
		started[i] = s.started
		dur[i] = int32(s.res.Duration.Milliseconds())
		code[i] = int32(s.res.StatusCode)
		body[i] = nullString(storableText(s.res.Body))
		signed[i] = int32(max(s.res.Signatures, 1))
		leases[i] = s.c.lease
		if !slices.Contains(endpoints, s.c.endpointID) {
			endpoints = append(endpoints, s.c.endpointID)
		}
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue(indexPlans)
	var marked int
	b.Queue(d.q(recordSuccessesSQL), d.opts.InstanceID, ids, attempt, started, dur, code, body, signed, leases).
		QueryRow(func(row pgx.Row) error { return row.Scan(&marked) })
	// The rows are locked in id order, as by every transaction that locks
	// several endpoints (SyncStaticEndpoints): two cannot wait for each
	// other.
	b.Queue(d.q(`UPDATE {{schema}}.endpoints SET failing_since = NULL,
			last_success_at = now(), last_attempt_at = now()
		WHERE id IN (SELECT id FROM {{schema}}.endpoints
			WHERE id = ANY($1) AND (failing_since IS NOT NULL OR last_success_at IS NULL
				OR last_success_at < now() - interval '1 second')
			ORDER BY id FOR NO KEY UPDATE)`), endpoints)
	b.Queue("COMMIT")
	// On an error the connection is left in an aborted transaction;
	// pgxpool closes such a connection instead of reusing it.
	if err := d.pool.SendBatch(ctx, b).Close(); err != nil || marked == n {
		return err
	}
	// Rare: a lease lost to the rescue, or an endpoint deleted meanwhile.
	// In a statement of its own, so it sees deletes committed since; it
	// passes over the attempts just logged.
	if _, err := d.pool.Exec(ctx, d.q(lostAttemptsSQL), ids, attempt, started, dur, code, body, signed); err != nil {
		// The deliveries are pending again and will be sent once more:
		// only these attempts' log entries are missing.
		d.log.Warn("log 2xx attempts of deliveries whose lease was lost", slog.Int("deliveries", n-marked), slog.Any("error", err))
	}
	return nil
}
