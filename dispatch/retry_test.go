package dispatch

import (
	"testing"
	"time"
)

func TestDefaultSchedule(t *testing.T) {
	t.Parallel()
	want := []time.Duration{0, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 12 * time.Hour}
	got := DefaultSchedule()
	if len(got) != len(want) {
		t.Fatalf("DefaultSchedule() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("DefaultSchedule() = %v, want %v", got, want)
		}
	}
	got[1] = time.Hour // callers may change their copy
	if DefaultSchedule()[1] != time.Minute {
		t.Fatal("DefaultSchedule shares its slice")
	}
}

func TestRetryPolicyNext(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	zero := func() float64 { return 0 }
	almostOne := func() float64 { return 0.999999 }
	sched := DefaultSchedule()

	tests := []struct {
		name       string
		p          RetryPolicy
		attempt    int
		retryAfter time.Duration
		want       time.Duration // from now
		exhausted  bool
	}{
		// Each step of the default schedule, no jitter.
		{"before first attempt", RetryPolicy{Rand: zero}, 0, 0, 0, false},
		{"after attempt 1", RetryPolicy{Rand: zero}, 1, 0, time.Minute, false},
		{"after attempt 2", RetryPolicy{Rand: zero}, 2, 0, 5 * time.Minute, false},
		{"after attempt 3", RetryPolicy{Rand: zero}, 3, 0, 30 * time.Minute, false},
		{"after attempt 4", RetryPolicy{Rand: zero}, 4, 0, 2 * time.Hour, false},
		{"after attempt 5", RetryPolicy{Rand: zero}, 5, 0, 12 * time.Hour, false},
		{"after attempt 6: exhausted", RetryPolicy{Rand: zero}, 6, 0, 0, true},
		{"far beyond: exhausted", RetryPolicy{Rand: zero}, 100, 0, 0, true},
		{"negative attempt counts as 0", RetryPolicy{Rand: zero}, -1, 0, 0, false},

		// Jitter: Rand 0 adds nothing, Rand ~1 adds almost Jitter×delay.
		{"jitter rand 0", RetryPolicy{Schedule: sched, Jitter: 0.1, Rand: zero}, 1, 0, time.Minute, false},
		{"jitter rand ~1", RetryPolicy{Schedule: sched, Jitter: 0.1, Rand: almostOne}, 1, 0, time.Minute + time.Duration(float64(6*time.Second)*0.999999), false},
		{"jitter on 12h", RetryPolicy{Schedule: sched, Jitter: 0.1, Rand: almostOne}, 5, 0, 12*time.Hour + time.Duration(float64(72*time.Minute)*0.999999), false},
		{"no jitter on an immediate attempt", RetryPolicy{Schedule: sched, Jitter: 0.5, Rand: almostOne}, 0, 0, 0, false},
		{"negative jitter counts as 0", RetryPolicy{Schedule: sched, Jitter: -0.5, Rand: almostOne}, 1, 0, time.Minute, false},
		{"faulty Rand below 0 never earlier", RetryPolicy{Schedule: sched, Jitter: 0.1, Rand: func() float64 { return -3 }}, 1, 0, time.Minute, false},
		{"faulty Rand above 1 bounded", RetryPolicy{Schedule: sched, Jitter: 0.1, Rand: func() float64 { return 7 }}, 1, 0, time.Minute + 6*time.Second - 1, false},

		// Retry-After: later than the schedule wins, earlier does not, capped.
		{"retry-after later wins", RetryPolicy{Rand: zero}, 1, 10 * time.Minute, 10 * time.Minute, false},
		{"retry-after earlier ignored", RetryPolicy{Rand: zero}, 2, 30 * time.Second, 5 * time.Minute, false},
		{"retry-after earlier than jittered delay ignored", RetryPolicy{Jitter: 0.1, Rand: almostOne}, 1, 62 * time.Second, time.Minute + time.Duration(float64(6*time.Second)*0.999999), false},
		{"retry-after capped", RetryPolicy{RetryAfterCap: 15 * time.Minute, Rand: zero}, 1, 48 * time.Hour, 15 * time.Minute, false},
		{"retry-after default cap 1h", RetryPolicy{Rand: zero}, 1, 48 * time.Hour, time.Hour, false},
		{"retry-after cap below schedule: schedule", RetryPolicy{RetryAfterCap: time.Minute, Rand: zero}, 3, 48 * time.Hour, 30 * time.Minute, false},
		{"retry-after does not extend the schedule", RetryPolicy{Rand: zero}, 6, time.Minute, 0, true},

		// A custom millisecond schedule (what tests and impatient users set).
		{"custom schedule", RetryPolicy{Schedule: []time.Duration{0, 10 * time.Millisecond, 20 * time.Millisecond}, Rand: zero}, 2, 0, 20 * time.Millisecond, false},
		{"custom schedule exhausted", RetryPolicy{Schedule: []time.Duration{0, 10 * time.Millisecond}, Rand: zero}, 2, 0, 0, true},
		{"empty schedule: one attempt only", RetryPolicy{Schedule: []time.Duration{}}, 0, 0, 0, true},
		{"negative step counts as 0", RetryPolicy{Schedule: []time.Duration{0, -time.Hour}, Rand: zero}, 1, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			at, ok := tt.p.Next(tt.attempt, now, tt.retryAfter)
			if ok == tt.exhausted {
				t.Fatalf("Next(%d) ok = %v, want %v", tt.attempt, ok, !tt.exhausted)
			}
			if !ok {
				return
			}
			if got := at.Sub(now); got != tt.want {
				t.Fatalf("Next(%d) = now+%v, want now+%v", tt.attempt, got, tt.want)
			}
		})
	}
}

// Over many random draws an attempt is never earlier than the schedule and
// never later than schedule×(1+Jitter).
func TestRetryPolicyJitterBounds(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	p := RetryPolicy{Jitter: 0.1} // real randomness
	sched := DefaultSchedule()
	seen := map[time.Duration]bool{}
	for range 2000 {
		for attempt := 1; attempt < len(sched); attempt++ {
			at, ok := p.Next(attempt, now, 0)
			if !ok {
				t.Fatalf("Next(%d) exhausted", attempt)
			}
			d := at.Sub(now)
			lo, hi := sched[attempt], sched[attempt]+sched[attempt]/10
			if d < lo || d >= hi {
				t.Fatalf("Next(%d) = now+%v, outside [%v, %v)", attempt, d, lo, hi)
			}
			if attempt == 1 {
				seen[d] = true
			}
		}
	}
	if len(seen) < 100 {
		t.Fatalf("jitter produced only %d distinct delays in 2000 draws", len(seen))
	}
}
