// Package lograte keeps a problem that repeats from flooding the log: the
// first occurrence of a run is logged, then at most one line per interval,
// saying how many were held back meanwhile.
package lograte

import (
	"sync"
	"time"
)

// Limiter rate-limits log lines by key (a problem, or a problem of one
// endpoint). The zero value is not usable; see New. Safe for concurrent
// use.
type Limiter struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	keys map[string]*run
}

type run struct {
	logged time.Time // when a line was last let through
	held   int       // occurrences since, not logged
}

// maxKeys bounds the keys kept; beyond it, runs quiet for longer than
// every are forgotten.
const maxKeys = 1024

// New returns a Limiter that lets one line per key through every every.
func New(every time.Duration) *Limiter {
	return &Limiter{every: every, now: time.Now, keys: map[string]*run{}}
}

// Allow reports whether this occurrence of key is to be logged, and how
// many occurrences were held back since the last one that was.
func (l *Limiter) Allow(key string) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	r := l.keys[key]
	if r == nil {
		if len(l.keys) >= maxKeys {
			for k, v := range l.keys {
				if now.Sub(v.logged) > l.every {
					delete(l.keys, k)
				}
			}
		}
		l.keys[key] = &run{logged: now}
		return true, 0
	}
	if now.Sub(r.logged) < l.every {
		r.held++
		return false, 0
	}
	held = r.held
	r.logged, r.held = now, 0
	return true, held
}

// Clear ends key's run (the problem is over) and reports whether there
// was one, so its end can be logged once.
func (l *Limiter) Clear(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, had := l.keys[key]
	delete(l.keys, key)
	return had
}
