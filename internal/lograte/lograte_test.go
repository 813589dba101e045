package lograte

import (
	"testing"
	"time"
)

// A run of one problem: the first line, then one per interval with the
// count held back; another key is its own run; Clear ends a run, and the
// next occurrence is logged at once.
func TestLimiter(t *testing.T) {
	at := time.Unix(1000, 0)
	l := New(time.Minute)
	l.now = func() time.Time { return at }
	step := func(d time.Duration, key string, wantOK bool, wantHeld int) {
		t.Helper()
		at = at.Add(d)
		if ok, held := l.Allow(key); ok != wantOK || held != wantHeld {
			t.Fatalf("%s after %s: Allow = %v, %d; want %v, %d", key, d, ok, held, wantOK, wantHeld)
		}
	}
	step(0, "a", true, 0)
	step(time.Second, "a", false, 0)
	step(time.Second, "a", false, 0)
	step(time.Second, "b", true, 0)
	step(time.Minute, "a", true, 2)
	step(time.Second, "a", false, 0)
	if !l.Clear("a") || l.Clear("a") {
		t.Fatal("Clear: want true for a run, then false")
	}
	step(time.Second, "a", true, 0)
}

// Keys quiet for longer than the interval are forgotten once maxKeys is
// reached, so per-endpoint keys cannot grow without bound.
func TestLimiterForgets(t *testing.T) {
	at := time.Unix(1000, 0)
	l := New(time.Minute)
	l.now = func() time.Time { return at }
	for i := range maxKeys {
		l.Allow(string(rune('a'+i%26)) + time.Duration(i).String())
	}
	at = at.Add(2 * time.Minute)
	l.Allow("new")
	if len(l.keys) != 1 {
		t.Fatalf("%d keys kept, want the new one only", len(l.keys))
	}
}
