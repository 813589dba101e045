package main

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/walhook/walhook/internal/receiver"
)

// latencies matches deliveries to the changes that caused them, by event
// type and row id (every generated event's data carries its row id), and
// keeps two measures of commit → receiver:
//
//   - client: the generator's clock read just before the change's
//     single-statement transaction is sent. It bounds the commit from
//     below, so this latency includes the statement's own execution and
//     commit (≈ 1 ms): an upper bound of commit → receiver.
//   - stamp: the envelope's timestamp, the commit time PostgreSQL wrote in
//     the commit record (walhook copies it, in milliseconds). The clock is
//     the same machine's; truncation to the millisecond adds up to 1 ms.
type latencies struct {
	mu     sync.Mutex
	sent   map[string]time.Time
	client []time.Duration
	stamp  []time.Duration
	seen   map[string]bool
}

func newLatencies() *latencies {
	return &latencies{sent: map[string]time.Time{}, seen: map[string]bool{}}
}

func (l *latencies) before(event, id string, t time.Time) {
	l.mu.Lock()
	l.sent[event+"|"+id] = t
	l.mu.Unlock()
}

// delivered is the receiver's OnDelivery.
func (l *latencies) delivered(d receiver.Delivery) {
	if d.Duplicate {
		return
	}
	var env struct {
		Timestamp time.Time `json:"timestamp"`
		Data      struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(d.Body, &env) != nil {
		return
	}
	key := d.Event + "|" + env.Data.ID
	l.mu.Lock()
	defer l.mu.Unlock()
	t0, ok := l.sent[key]
	if !ok || l.seen[key] {
		return
	}
	l.seen[key] = true
	l.client = append(l.client, d.At.Sub(t0))
	if !env.Timestamp.IsZero() {
		l.stamp = append(l.stamp, d.At.Sub(env.Timestamp))
	}
}

// matched is how many sent changes have been delivered.
func (l *latencies) matched() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// quantile returns the q-quantile (nearest rank) of ds; 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// median of positive values; 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
