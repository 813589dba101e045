package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// outcome is what one attempt did to its delivery.
type outcome struct {
	status   string        // delivered, pending (retry), failed
	delay    time.Duration // until the next attempt, when pending
	errText  string
	disable  string // non-empty: disable the endpoint at once with this reason (410)
	exhausts bool   // the delivery failed for good: run the disable rule
}

// deliver renders, signs and sends one claimed delivery and records the
// attempt before it returns. It never returns an error: a failure to
// record leaves the row claimed, and the lease rescue (or release at stop)
// puts it back.
func (d *Dispatcher) deliver(ctx context.Context, c claimed) Result {
	return d.deliverVia(ctx, c, nil, nil)
}

// deliverVia is deliver, handing a 2xx of a claimed (non-test) delivery to
// rec when rec is not nil: the recorder writes it with others in one
// transaction, and the worker is free at once. Every other outcome (retry,
// failure, disable) is written here, in its own transaction. stop (nil:
// none) ends when the dispatcher stops; ctx outlives it.
func (d *Dispatcher) deliverVia(ctx context.Context, c claimed, rec *recorder, stop context.Context) Result {
	keys, err := d.keys(c)
	var res Result
	started := time.Now()
	if err != nil {
		res = Result{Err: err, Permanent: true}
	} else {
		res = d.client.Send(ctx, Request{URL: c.url, ID: c.id, Event: c.event.Type,
			Body: c.event.Body(c.id), Keys: keys})
	}
	d.metrics.attemptLatency.Observe(res.Duration.Seconds())
	o := d.decide(c, res)
	if rec != nil && o.status == "delivered" && !c.test {
		rec.add(success{c: c, started: started, res: res})
		return res
	}
	// Recording is not cut short by a shutdown at once (the attempt
	// happened), but once the stop has begun it gets recordRetryClosing,
	// as the successes do: a store that does not answer would otherwise
	// hold the stop 30 s past the attempt. Unrecorded, the delivery is
	// released or rescued and attempted again.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if stop != nil {
		defer context.AfterFunc(stop, func() { time.AfterFunc(recordRetryClosing, cancel) })()
	}
	if err := d.record(rctx, c, started, res, o); err != nil {
		d.log.Error("record delivery attempt", slog.String("delivery", c.id),
			slog.String("endpoint", c.endpointID), slog.Any("error", err))
		d.noteUnrecorded(c)
		return res
	}
	if o.status == "delivered" {
		d.delivered(c, started, res)
		return res
	}
	d.metrics.countOutcome(c.endpointID, outcomeLabel(o.status))
	d.logFailure(c, res, o)
	return res
}

// logFailure logs a failed attempt. Every attempt is at debug (and in
// the delivery log the API shows); at info and warn an endpoint's failures
// are one line when they begin and then at most one a minute with how many
// there were meanwhile, so a dead endpoint, whose every delivery fails
// for up to a day before the disable rule stops it, does not flood the
// log with the same line per attempt.
func (d *Dispatcher) logFailure(c claimed, res Result, o outcome) {
	attrs := []any{slog.String("endpoint", c.endpointID), slog.Int("status", res.StatusCode), slog.String("error", o.errText)}
	final := o.status != "pending"
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		one := append([]any{slog.String("delivery", c.id), slog.Int("attempt", c.attempt), slog.Bool("final", final)}, attrs...)
		if !final {
			one = append(one, slog.Duration("retry_in", o.delay))
		}
		d.log.Debug("delivery attempt failed", one...)
	}
	if o.disable != "" && !c.test {
		return // a 410: "endpoint disabled" says it, and nothing is retried
	}
	if final {
		if ok, held := d.logLimit.Allow("failed " + c.endpointID); ok {
			d.log.Warn("deliveries to an endpoint failed for good (retries exhausted or refused; kept for recover)",
				append(attrs, slog.String("delivery", c.id), slog.Int("more_since_last_line", held))...)
		}
		return
	}
	if ok, held := d.logLimit.Allow("retry " + c.endpointID); ok {
		d.log.Info("delivery attempts to an endpoint fail; retrying on the schedule",
			append(attrs, slog.String("delivery", c.id), slog.Int("more_since_last_line", held))...)
	}
}

// delivered counts and logs a 2xx once it is recorded, on either path
// (deliver's own transaction or the recorder's batch).
func (d *Dispatcher) delivered(c claimed, started time.Time, res Result) {
	d.metrics.countOutcome(c.endpointID, outcomeDelivered)
	if !c.test { // a test event was never committed in the source
		d.metrics.deliveryLatency.Observe(started.Add(res.Duration).Sub(c.event.OccurredAt).Seconds())
	}
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		d.log.Debug("delivered", slog.String("delivery", c.id), slog.String("endpoint", c.endpointID),
			slog.Int("attempt", c.attempt), slog.Int("status", res.StatusCode), slog.Duration("duration", res.Duration))
	}
}

// keys returns the HMAC keys to sign with: the current secret, and the
// previous one while its rotation overlap lasts.
func (d *Dispatcher) keys(c claimed) ([][]byte, error) {
	k, err := d.secrets.decode(c.secret)
	if err != nil {
		return nil, fmt.Errorf("endpoint secret: %w", err)
	}
	keys := [][]byte{k}
	if c.prevSecretValid && c.prevSecret != "" {
		if pk, err := d.secrets.decode(c.prevSecret); err == nil {
			keys = append(keys, pk)
		}
	}
	return keys, nil
}

// secretCache keeps the keys of the secrets recently signed with, so an
// attempt does not decode its endpoint's secret again. It holds at most
// secretCacheSize of them (a few per endpoint, while rotating); when full
// it starts over.
type secretCache struct {
	mu   sync.Mutex
	keys map[string][]byte
}

const secretCacheSize = 1024

func (sc *secretCache) decode(secret string) ([]byte, error) {
	sc.mu.Lock()
	k, ok := sc.keys[secret]
	sc.mu.Unlock()
	if ok {
		return k, nil
	}
	k, err := DecodeSecret(secret)
	if err != nil {
		return nil, err
	}
	sc.mu.Lock()
	if sc.keys == nil || len(sc.keys) >= secretCacheSize {
		sc.keys = map[string][]byte{}
	}
	sc.keys[secret] = k
	sc.mu.Unlock()
	return k, nil
}

// decide maps an attempt's result to the delivery's next state with the
// retry policy. Retry delays are relative: the store computes the due time
// with its own now(), so every process agrees on it.
func (d *Dispatcher) decide(c claimed, res Result) outcome {
	if res.OK() {
		return outcome{status: "delivered"}
	}
	o := outcome{errText: attemptError(res)}
	if res.Gone {
		// Not the URL: it may carry a token, and the reason is logged
		// and shown by the API.
		o.disable = "receiver answered 410 Gone"
	}
	if c.test {
		o.status = "failed"
		return o
	}
	if !res.Permanent {
		now := d.opts.Now()
		if at, ok := d.opts.Retry.Next(c.attempt, now, res.RetryAfter); ok {
			o.status, o.delay = "pending", max(at.Sub(now), 0)
			return o
		}
	}
	o.status, o.exhausts = "failed", true
	return o
}

// attemptError is the delivery log's error text: the client's error, or
// the HTTP status when there is no error value.
func attemptError(res Result) string {
	switch {
	case res.Err != nil:
		return res.Err.Error()
	case res.StatusCode != 0:
		return fmt.Sprintf("http status %d", res.StatusCode)
	}
	return "unknown failure"
}

// record writes the attempt and the delivery's new state, and updates the
// endpoint's health, in one transaction. The delivery row is only changed
// while this process still holds its claim (locked_by): if the lease ran
// out and another process took it, that process owns the outcome.
//
// A success (the hot path) is written in one round trip, its transaction
// committed with synchronous_commit off: the store does not wait for the
// WAL flush of an outcome. That is safe for at-least-once delivery — if
// the store crashes before the flush, the delivery is still 'delivering'
// after recovery, the lease rescue makes it pending again and it is sent
// once more with the same webhook id — and it keeps the fsync off the
// path every delivery takes. Append, the durability point, stays
// synchronous.
func (d *Dispatcher) record(ctx context.Context, c claimed, started time.Time, res Result, o outcome) error {
	if o.status == "delivered" {
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue("SET LOCAL synchronous_commit = off")
		d.queueOutcome(b, c, started, res, o)
		b.Queue("COMMIT")
		err := d.pool.SendBatch(ctx, b).Close()
		if err != nil {
			return err
		}
		return nil
	}
	// A 410 disables the endpoint in the attempt's own transaction: as a
	// transaction of its own after this one, the delivery was pending
	// again in between, and a claim could send it once more when the
	// schedule's next delay was short. The endpoints lock comes first,
	// before any delivery row (lockEndpointsSQL).
	gone := o.disable != "" && !c.test
	reason, disabled := "", false
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		if gone {
			b.Queue(d.q(lockEndpointsSQL))
		}
		d.queueOutcome(b, c, started, res, o)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		if c.test {
			return nil
		}
		if gone {
			var err error
			disabled, err = d.disableIn(ctx, tx, c.endpointID, o.disable)
			return err
		}
		if !d.opts.DisableNever {
			var err error
			if reason, err = d.disableRule(ctx, tx, c.endpointID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if disabled {
		d.afterDisable(ctx, c.endpointID, o.disable)
	}
	if reason == "" {
		return nil
	}
	// Not in the outcome's transaction: disabling takes the endpoints lock
	// (lockEndpointsSQL), which must come before any delivery row. The
	// rule's outcome is final, so nothing is due meanwhile.
	return d.disable(ctx, c.endpointID, reason)
}

// noteDisabled records that this process disabled an endpoint (or saw it
// disabled through its API) now: deliveries to it that this process
// claimed before and has not started are not sent (see claimLoop).
//
// A note matters only to deliveries claimed before it, and this process
// holds none for longer than a lease: every 64th note drops the notes
// older than two leases, so deleted and long-disabled endpoints do not
// pile up.
func (d *Dispatcher) noteDisabled(endpointID string) { d.note(&d.disabled, endpointID) }

// note records endpointID in m as of now. Every 64th note (of either map)
// prunes both maps (pruneNotes): pruning only the map of that note let the
// other grow for good when the notes alternated (a rotate then a delete
// per endpoint put every 64th note in disabled, never in changed).
func (d *Dispatcher) note(m *sync.Map, endpointID string) {
	now := time.Now()
	m.Store(endpointID, now)
	if d.notes.Add(1)%64 == 0 {
		d.pruneNotes(now)
	}
}

// pruneNotes forgets the disabled and changed notes older than two
// leases: no delivery claimed before then is still held. The maintenance
// loop runs it too, so notes do not outstay their use when none follow.
func (d *Dispatcher) pruneNotes(now time.Time) {
	for _, m := range []*sync.Map{&d.disabled, &d.changed} {
		m.Range(func(k, v any) bool {
			if now.Sub(v.(time.Time)) > 2*d.opts.Lease {
				m.CompareAndDelete(k, v)
			}
			return true
		})
	}
}

// noteChanged records that the endpoint's URL or secret changed now (an
// endpointChangedPayload notification, or this process's own change).
func (d *Dispatcher) noteChanged(endpointID string) { d.note(&d.changed, endpointID) }

// changedSince reports whether the endpoint's URL or secret changed after
// t, as far as this process was told; also true for every endpoint when
// this process's LISTEN connection was made again after t, since a change
// announced while it was away would be missed.
func (d *Dispatcher) changedSince(endpointID string, t time.Time) bool {
	if ns := d.relisten.Load(); ns != 0 && time.Unix(0, ns).After(t) {
		return true
	}
	v, ok := d.changed.Load(endpointID)
	return ok && v.(time.Time).After(t)
}

// disabledSince reports whether this process noted the endpoint disabled
// after t.
func (d *Dispatcher) disabledSince(endpointID string, t time.Time) bool {
	v, ok := d.disabled.Load(endpointID)
	return ok && v.(time.Time).After(t)
}

// queueOutcome queues the attempt row, the delivery's new state and the
// endpoint's health update.
func (d *Dispatcher) queueOutcome(b *pgx.Batch, c claimed, started time.Time, res Result, o outcome) {
	// Both callers run this in a transaction: the plan settings last until
	// its end (see indexPlans).
	b.Queue(indexPlans)
	// A retry for an endpoint disabled meanwhile becomes skipped, kept
	// for recovery. The endpoint row is KEY SHARE locked first, and held
	// to the commit, as for a held delivery released as skipped (see
	// releaseIDs): a re-enable either committed before, and the update
	// below reads the endpoint active, or waits for this transaction, and
	// a recover after it finds the skipped row. (Read in the update's own
	// snapshot, a re-enable and a recover could both run between it and
	// the commit, leaving the retry skipped for good.)
	if o.status == "pending" {
		b.Queue(d.q(`SELECT FROM {{schema}}.endpoints WHERE id = $1 FOR KEY SHARE`), c.endpointID)
	}
	b.Queue(d.q(`UPDATE {{schema}}.deliveries d SET
				status = CASE WHEN $3 = 'pending' AND NOT coalesce((SELECT active FROM {{schema}}.endpoints WHERE id = d.endpoint_id), false)
				              THEN 'skipped' ELSE $3 END,
				next_attempt_at = CASE WHEN $3 = 'pending' THEN now() + make_interval(secs => $4) ELSE d.next_attempt_at END,
				locked_by = NULL, locked_until = NULL,
				last_status_code = $5, last_error = $6, last_duration_ms = $7,
				delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE d.delivered_at END,
				updated_at = now()
			WHERE id = $1 AND locked_by = $2 AND locked_until = $8`), // held by this claim (see recordSuccessesSQL)
		c.id, d.opts.InstanceID, o.status, o.delay.Seconds(), nullInt(res.StatusCode),
		nullString(o.errText), res.Duration.Milliseconds(), c.lease)
	// After the delivery's update, and not for a delivery deleted meanwhile
	// (its endpoint was deleted): the update waits for such a delete, and
	// this statement then sees the delivery gone, where an attempt written
	// first would outlive it.
	b.Queue(d.q(`INSERT INTO {{schema}}.attempts
			(delivery_id, attempt, started_at, duration_ms, status_code, error, response_body, signed_by)
			SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM {{schema}}.deliveries WHERE id = $1)`),
		c.id, c.attempt, started, res.Duration.Milliseconds(), nullInt(res.StatusCode),
		nullString(o.errText), nullString(storableText(res.Body)), res.Signatures)
	if !c.test {
		if o.status == "delivered" {
			// Throttled to one write a second per endpoint unless its
			// state changes: a busy endpoint's row would otherwise be a
			// hot spot every worker updates.
			b.Queue(d.q(`UPDATE {{schema}}.endpoints SET failing_since = NULL,
						last_success_at = now(), last_attempt_at = now()
					WHERE id = $1 AND (failing_since IS NOT NULL OR last_success_at IS NULL
						OR last_success_at < now() - interval '1 second')`), c.endpointID)
		} else {
			b.Queue(d.q(`UPDATE {{schema}}.endpoints SET failing_since = coalesce(failing_since, now()),
						last_attempt_at = now()
					WHERE id = $1 AND (failing_since IS NULL OR last_attempt_at IS NULL
						OR last_attempt_at < now() - interval '1 second')`), c.endpointID)
		}
	}
}

// disableRule returns a reason when the endpoint has had no 2xx for
// DisableWindow and at least DisableMinFailed deliveries failed for good
// within it. Both conditions are needed: the window alone would disable a
// quiet endpoint after one unlucky delivery, the count alone would let a
// burst of failures in one minute disable an endpoint that is fine again.
func (d *Dispatcher) disableRule(ctx context.Context, tx pgx.Tx, endpointID string) (string, error) {
	var failed int
	var since *time.Time
	err := tx.QueryRow(ctx, d.q(`
		SELECT e.failing_since,
		       (SELECT count(*) FROM {{schema}}.deliveries x
		        WHERE x.endpoint_id = e.id AND x.status = 'failed'
		          AND x.updated_at >= now() - make_interval(secs => $2) AND NOT `+isTestSend+`)
		FROM {{schema}}.endpoints e
		WHERE e.id = $1 AND e.active AND e.failing_since <= now() - make_interval(secs => $2)`),
		endpointID, d.opts.DisableWindow.Seconds()).Scan(&since, &failed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("disable rule: %w", err)
	}
	if failed < d.opts.DisableMinFailed {
		return "", nil
	}
	return fmt.Sprintf("no 2xx since %s (over %s) and %d deliveries failed after all retries",
		since.UTC().Format(time.RFC3339), d.opts.DisableWindow, failed), nil
}

// disable turns the endpoint off with reason and time, then skips its
// pending deliveries (kept: an admin can re-enable and recover them). The
// skip runs after the disable has committed, so appends (which wait while
// an endpoint changes) are not held up for as long as a large backlog
// takes to skip.
func (d *Dispatcher) disable(ctx context.Context, endpointID, reason string) error {
	var disabled bool
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, d.q(lockEndpointsSQL)); err != nil {
			return err
		}
		var err error
		disabled, err = d.disableIn(ctx, tx, endpointID, reason)
		return err
	})
	if err != nil {
		return fmt.Errorf("disable endpoint: %w", err)
	}
	if disabled {
		d.afterDisable(ctx, endpointID, reason)
	}
	return nil
}

// disableIn disables the endpoint in tx, which holds the endpoints lock,
// and announces it on commit; false if it was not active.
func (d *Dispatcher) disableIn(ctx context.Context, tx pgx.Tx, endpointID, reason string) (bool, error) {
	tag, err := tx.Exec(ctx, d.q(`UPDATE {{schema}}.endpoints
		SET active = false, disabled_reason = $2, disabled_at = now(), updated_at = now()
		WHERE id = $1 AND active`), endpointID, reason)
	if err != nil || tag.RowsAffected() == 0 {
		return false, err
	}
	if _, err := tx.Exec(ctx, notifyEndpointsOffSQL, d.channel, []string{endpointID}); err != nil {
		return false, err
	}
	return true, nil
}

// afterDisable follows the commit of a disable: deliveries this process
// holds for the endpoint are not sent, and its pending ones are skipped.
func (d *Dispatcher) afterDisable(ctx context.Context, endpointID, reason string) {
	d.noteDisabled(endpointID)
	skipped, err := d.skipPending(ctx, endpointID)
	if err != nil {
		// The maintenance loop skips them (claims pass them by).
		d.log.Warn("endpoint disabled; skipping its pending deliveries failed (maintenance will)",
			slog.String("endpoint", endpointID), slog.String("reason", reason), slog.Any("error", err))
		return
	}
	d.log.Warn("endpoint disabled", slog.String("endpoint", endpointID), slog.String("reason", reason),
		slog.Int64("skipped_deliveries", skipped))
}

func nullInt(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// storableText makes a response body prefix storable in a text column:
// PostgreSQL text holds neither NUL bytes nor invalid UTF-8.
func storableText(b []byte) string {
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "")
}

// outcomeLabel names a delivery's new status for the metrics.
func outcomeLabel(status string) string {
	switch status {
	case "delivered":
		return outcomeDelivered
	case "pending":
		return outcomeRetry
	}
	return outcomeFailed
}
