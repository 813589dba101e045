package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/time/rate"
)

// keyEntry is one configured key with its two token buckets.
type keyEntry struct {
	name  string
	sum   [32]byte // SHA-256 of the key: compared instead of the key itself
	write *rate.Limiter
	read  *rate.Limiter
}

func newKeys(keys []Key, writePerMin, readPerMin int) ([]keyEntry, error) {
	if len(keys) == 0 {
		return nil, errors.New("api: no API keys configured (api.keys)")
	}
	out := make([]keyEntry, 0, len(keys))
	names := map[string]bool{}
	for i, k := range keys {
		name := k.Name
		if name == "" {
			name = "key" + strconv.Itoa(i+1)
		}
		if k.Key == "" {
			return nil, fmt.Errorf("api: key %q is empty", name)
		}
		if names[name] {
			return nil, fmt.Errorf("api: two keys are named %q", name)
		}
		names[name] = true
		out = append(out, keyEntry{
			name:  name,
			sum:   sha256.Sum256([]byte(k.Key)),
			write: perMinute(writePerMin),
			read:  perMinute(readPerMin),
		})
	}
	return out, nil
}

// perMinute is a token bucket of n tokens refilled at n per minute: a
// client may spend its minute's budget at once, then one every 60/n s.
func perMinute(n int) *rate.Limiter {
	return rate.NewLimiter(rate.Every(time.Minute/time.Duration(n)), n)
}

// authenticate returns the key matching got, or nil. Hashing both sides
// makes every comparison the same length, and every key is compared (no
// early return), so the time taken says nothing about which key or how
// much of it matched.
func (s *Server) authenticate(got string) *keyEntry {
	if got == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(got))
	match := -1
	for i := range s.keys {
		if subtle.ConstantTimeCompare(sum[:], s.keys[i].sum[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return nil
	}
	return &s.keys[match]
}

// allow spends one token of the key's read bucket (GET, HEAD) or write
// bucket (everything else: create, update, delete, test, redeliver,
// recover, rotate). When empty it returns how long until a token is back.
func (k *keyEntry) allow(method string, now time.Time) (time.Duration, bool) {
	lim := k.write
	if method == http.MethodGet || method == http.MethodHead {
		lim = k.read
	}
	res := lim.ReserveN(now, 1)
	if !res.OK() {
		return time.Minute, false
	}
	if d := res.DelayFrom(now); d > 0 {
		// Give the token back: a refused request must not push the next
		// allowed one further out.
		res.CancelAt(now)
		return d, false
	}
	return 0, true
}

// retryAfter renders a wait as whole seconds, rounded up, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}
