package dispatch

import (
	"context"
	"fmt"
	"time"
)

// Stats is the outbox's health for `walhook run` logs and the status API.
type Stats struct {
	// Pending counts deliveries not finished yet (pending or in flight).
	Pending int64
	// Failing counts pending deliveries that have failed at least once.
	Failing int64
	// OldestPendingAge is the age of the oldest unfinished delivery.
	OldestPendingAge time.Duration
	// DeliveredLastMinute / 60 is the recent delivery rate per second.
	DeliveredLastMinute int64
	Endpoints           []EndpointStat
}

// Endpoint health states of EndpointStat.State.
const (
	StateHealthy  = "healthy"
	StateFailing  = "failing"
	StateDisabled = "disabled"
)

// EndpointStat is one endpoint's health.
type EndpointStat struct {
	ID    string
	State string // StateHealthy, StateFailing or StateDisabled
	// Reason and Since: why and since when it is disabled, or since when
	// it is failing (no 2xx since the first failure).
	Reason string
	Since  time.Time
	// LastSuccess is the time of the last 2xx (zero when never).
	LastSuccess time.Time
}

// Stats reads the outbox depth and endpoint health. The counts use the
// partial indexes on unfinished rows and deliveries_done, so they stay
// cheap however much delivered history is kept.
func (d *Dispatcher) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	var age float64
	err := d.pool.QueryRow(ctx, d.q(`SELECT
			(SELECT count(*) FROM {{schema}}.deliveries WHERE status IN ('pending', 'delivering')),
			(SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'pending' AND attempts > 0),
			(SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
			   FROM {{schema}}.deliveries WHERE status IN ('pending', 'delivering')),
			(SELECT count(*) FROM {{schema}}.deliveries
			   WHERE status = 'delivered' AND updated_at > now() - interval '1 minute')`)).
		Scan(&s.Pending, &s.Failing, &age, &s.DeliveredLastMinute)
	if err != nil {
		return Stats{}, fmt.Errorf("outbox stats: %w", err)
	}
	s.OldestPendingAge = time.Duration(age * float64(time.Second))
	rows, err := d.pool.Query(ctx, d.q(`SELECT id, active, coalesce(disabled_reason, ''),
			disabled_at, failing_since, last_success_at
		FROM {{schema}}.endpoints ORDER BY id`))
	if err != nil {
		return Stats{}, fmt.Errorf("endpoint stats: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var e EndpointStat
		var active bool
		var disabledAt, failingSince, lastSuccess *time.Time
		if err := rows.Scan(&e.ID, &active, &e.Reason, &disabledAt, &failingSince, &lastSuccess); err != nil {
			return Stats{}, fmt.Errorf("endpoint stats: %w", err)
		}
		switch {
		case !active:
			e.State, e.Since = StateDisabled, timeOrZero(disabledAt)
		case failingSince != nil:
			e.State, e.Since, e.Reason = StateFailing, *failingSince, "no 2xx since the first failure"
		default:
			e.State, e.Reason = StateHealthy, ""
		}
		e.LastSuccess = timeOrZero(lastSuccess)
		s.Endpoints = append(s.Endpoints, e)
	}
	if err := rows.Err(); err != nil {
		return Stats{}, fmt.Errorf("endpoint stats: %w", err)
	}
	return s, nil
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
