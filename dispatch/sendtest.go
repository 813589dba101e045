package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/mapper"
)

// TestEventType is the event type of SendTest's event.
const TestEventType = "webhook.test"

// isTestSend is true of a deliveries row that SendTest made: its event
// id is "test:" and hex, which no mapped event's (hex only) can be.
const isTestSend = `starts_with(event_id, 'test:')`

// testAbandoned is the last_error of a test send whose outcome was never
// recorded (its process died while sending it).
const testAbandoned = "test send abandoned: the process sending it stopped before recording its outcome"

// TestResult is the outcome of SendTest.
type TestResult struct {
	DeliveryID string
	StatusCode int // 0 when no response arrived
	Duration   time.Duration
	Error      string // "" on a 2xx
}

// SendTest sends a "webhook.test" event to one endpoint now, through the
// real delivery path: the event and its delivery are stored, claimed by
// this process, signed, sent and recorded in the delivery log like any
// other. It is sent even to a disabled endpoint (an admin tests before
// re-enabling), is not retried and does not change the endpoint's health.
// ErrNotFound when there is no such endpoint.
func (d *Dispatcher) SendTest(ctx context.Context, endpointID string) (TestResult, error) {
	var rb [12]byte
	_, _ = rand.Read(rb[:])
	now := d.opts.Now().UTC()
	ev := mapper.Event{
		ID:         "test:" + hex.EncodeToString(rb[:]),
		Type:       TestEventType,
		Envelope:   d.opts.Envelope,
		OccurredAt: now.Truncate(time.Millisecond),
		Data:       []byte(fmt.Sprintf(`{"message":"test event from walhook","endpoint_id":%q}`, endpointID)),
	}
	c := claimed{id: mapper.DeliveryID(ev.Envelope, ev.ID, endpointID), endpointID: endpointID, attempt: 1, event: ev, test: true}
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, d.q(`SELECT url, secret, coalesce(previous_secret, ''),
				coalesce(previous_secret_until > now(), false)
			FROM {{schema}}.endpoints WHERE id = $1 FOR KEY SHARE`), endpointID).
			Scan(&c.url, &c.secret, &c.prevSecret, &c.prevSecretValid)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("endpoint %q: %w", endpointID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, d.q(`INSERT INTO {{schema}}.events (id, type, envelope, occurred_at, data)
			VALUES ($1, $2, $3, $4, $5::json)`), ev.ID, ev.Type, string(ev.Envelope), ev.OccurredAt, string(ev.Data)); err != nil {
			return err
		}
		// Inserted already claimed by this process, so no worker takes it.
		return tx.QueryRow(ctx, d.q(`INSERT INTO {{schema}}.deliveries
			(id, event_id, endpoint_id, event_type, status, attempts, locked_by, locked_until)
			VALUES ($1, $2, $3, $4, 'delivering', 1, $5, now() + make_interval(secs => $6)) RETURNING locked_until`),
			c.id, ev.ID, endpointID, ev.Type, d.opts.InstanceID, d.opts.Lease.Seconds()).Scan(&c.lease)
	})
	if err != nil {
		return TestResult{}, fmt.Errorf("send test: %w", err)
	}
	res := d.deliver(ctx, c)
	tr := TestResult{DeliveryID: c.id, StatusCode: res.StatusCode, Duration: res.Duration}
	if !res.OK() {
		tr.Error = attemptError(res)
	}
	return tr, nil
}
