package dispatch

import (
	"math"
	"math/rand/v2"
	"time"
)

// DefaultRetryAfterCap is the longest Retry-After hint honoured when a
// RetryPolicy leaves RetryAfterCap zero.
const DefaultRetryAfterCap = time.Hour

// DefaultSchedule is seed 000's schedule: attempt 1 immediately, then
// +1 min, +5 min, +30 min, +2 h, +12 h — six attempts over about 14.5 h.
func DefaultSchedule() []time.Duration {
	return []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 12 * time.Hour}
}

// RetryPolicy decides when a delivery's next attempt is due. It is a pure
// function of its arguments (the clock and the randomness are injected), so
// it is tested on its own and every worker computes the same thing.
type RetryPolicy struct {
	// Schedule[i] (i ≥ 1) is the delay before attempt i+1, counted from
	// the end of attempt i. Its length is the number of attempts.
	// Schedule[0] is not read: the first attempt is made at once (config
	// refuses anything but 0 there). Nil: DefaultSchedule.
	Schedule []time.Duration
	// Jitter adds up to Jitter×delay to each delay, never subtracts, so an
	// attempt is never earlier than the schedule while a burst of failures
	// does not come back as one synchronised burst. Negative counts as 0.
	Jitter float64
	// RetryAfterCap bounds a receiver's Retry-After hint, so a receiver
	// cannot park a delivery for days. Zero: DefaultRetryAfterCap.
	RetryAfterCap time.Duration
	// Rand returns a number in [0, 1). Nil: math/rand/v2.Float64.
	Rand func() float64
}

// Next returns when the next attempt is due. attempt is the number of
// attempts made so far (1 after the first); ok is false when the schedule
// is exhausted and the delivery has failed for good.
//
// The delay is Schedule[attempt] plus positive jitter. A Retry-After hint
// (from a 429 or 503) wins when it is later than that, capped at
// RetryAfterCap; it never makes an attempt earlier than the schedule and
// never adds an attempt beyond it.
func (p RetryPolicy) Next(attempt int, now time.Time, retryAfter time.Duration) (at time.Time, ok bool) {
	sched := p.Schedule
	if sched == nil {
		sched = DefaultSchedule()
	}
	if attempt < 0 {
		attempt = 0
	}
	if attempt >= len(sched) {
		return time.Time{}, false
	}
	delay := max(sched[attempt], 0)
	if j := p.Jitter; j > 0 && delay > 0 {
		r := p.rand()
		// Clamp to [0,1) so a faulty Rand cannot make the delay shorter.
		r = min(max(r, 0), math.Nextafter(1, 0))
		extra := float64(delay) * j * r
		if extra >= float64(math.MaxInt64-delay) {
			delay = math.MaxInt64
		} else {
			delay += time.Duration(extra)
		}
	}
	if retryAfter > 0 {
		limit := p.RetryAfterCap
		if limit <= 0 {
			limit = DefaultRetryAfterCap
		}
		delay = max(delay, min(retryAfter, limit))
	}
	return now.Add(delay), true
}

func (p RetryPolicy) rand() float64 {
	if p.Rand != nil {
		return p.Rand()
	}
	return rand.Float64()
}
