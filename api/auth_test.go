package api_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/api"
)

func TestAuthRequiresAValidKey(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	id := s.create(t, "https://hooks.example.com/a").SubscriptionID
	before := s.snapshot(t)
	routes := []struct{ method, path, body string }{
		{"POST", "/api/v1/webhooks/create", `{"url":"https://hooks.example.com/b","events":["auction.bid"]}`},
		{"GET", "/api/v1/webhooks", ""},
		{"GET", "/api/v1/webhooks/" + id, ""},
		{"PUT", "/api/v1/webhooks/" + id, `{"active":false}`},
		{"DELETE", "/api/v1/webhooks/" + id, ""},
		{"POST", "/api/v1/webhooks/" + id + "/test", ""},
		{"GET", "/api/v1/webhooks/" + id + "/deliveries", ""},
		{"POST", "/api/v1/webhooks/" + id + "/recover", `{"since":0}`},
		{"POST", "/api/v1/webhooks/" + id + "/rotate-secret", ""},
		{"GET", "/api/v1/deliveries/x", ""},
		{"POST", "/api/v1/deliveries/x/redeliver", ""},
		{"GET", "/api/v1/events", ""},
		{"GET", "/api/v1/status", ""},
		{"GET", "/api/v1/no-such-route", ""},
	}
	for _, k := range []struct{ name, key string }{
		{"missing", ""}, {"wrong", "sk_test_wrong"}, {"prefix of a key", testKey[:len(testKey)-1]},
		{"key plus a byte", testKey + "x"}, {"case changed", strings.ToUpper(testKey)},
	} {
		for _, r := range routes {
			var body any
			if r.body != "" {
				body = r.body
			}
			res := s.do(t, k.key, r.method, r.path, body)
			if res.Status != http.StatusUnauthorized || res.Error == nil || res.Error.Code != "unauthorized" {
				t.Errorf("%s key, %s %s: got %d %s, want 401 unauthorized", k.name, r.method, r.path, res.Status, res.Raw)
			}
		}
	}
	if after := s.snapshot(t); after != before {
		t.Fatal("unauthenticated requests changed the store")
	}
	// Both configured keys work.
	for _, k := range []string{testKey, otherKey} {
		s.do(t, k, "GET", "/api/v1/webhooks/"+id, nil).ok(t, http.StatusOK, nil)
	}
}

func TestOpenPathsAreConfigurable(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	for _, p := range []string{"/healthz", "/readyz"} {
		var h struct{ Status string }
		s.do(t, "", "GET", p, nil).ok(t, http.StatusOK, &h)
		if h.Status == "" {
			t.Errorf("%s: no status", p)
		}
	}
	res, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "walhook_api_requests_total") {
		t.Fatalf("/metrics without a key: %d\n%.300s", res.StatusCode, body)
	}

	closed := newStack(t, stackConfig{api: func(o *api.Options) { o.Open = []string{} }})
	for _, p := range []string{"/healthz", "/readyz"} {
		closed.do(t, "", "GET", p, nil).fails(t, http.StatusUnauthorized, "unauthorized")
		closed.do(t, testKey, "GET", p, nil).ok(t, http.StatusOK, nil)
	}
	req, _ := http.NewRequest("GET", closed.url+"/metrics", nil)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/metrics with no open paths and no key: %d, want 401", res.StatusCode)
	}
}

func TestReadyzReportsNotReady(t *testing.T) {
	t.Parallel()
	var ready atomic.Bool
	s := newStack(t, stackConfig{api: func(o *api.Options) {
		o.Ready = func(ctx context.Context) error {
			if !ready.Load() {
				return errors.New("failed to connect to `user=walhook database=app`: 10.1.2.3:5432 (store.internal): timeout")
			}
			return nil
		}
	}})
	// /readyz needs no key: the cause (hosts, users, databases) is
	// logged, not shown.
	r := s.do(t, "", "GET", "/readyz", nil)
	r.fails(t, http.StatusServiceUnavailable, "not_ready")
	if strings.Contains(r.Error.Message, "10.1.2.3") || strings.Contains(r.Error.Message, "walhook") ||
		!strings.Contains(r.Error.Message, "the log says why") {
		t.Fatalf("message %q: want no connection details, and where to look", r.Error.Message)
	}
	s.do(t, "", "GET", "/healthz", nil).ok(t, http.StatusOK, nil)
	ready.Store(true)
	s.do(t, "", "GET", "/readyz", nil).ok(t, http.StatusOK, nil)
}

func TestRoutingErrorsAreEnvelopes(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	s.call(t, "GET", "/api/v1/nothing-here", nil).fails(t, http.StatusNotFound, "not_found")
	r := s.call(t, "PATCH", "/api/v1/webhooks/whk_1", `{}`)
	r.fails(t, http.StatusMethodNotAllowed, "method_not_allowed")
	if allow := r.Header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "PUT") || !strings.Contains(allow, "DELETE") {
		t.Fatalf("Allow %q, want GET, PUT and DELETE", allow)
	}
	// A literal route's path is that route for every method, not an id.
	r = s.call(t, "GET", "/api/v1/webhooks/create", nil)
	r.fails(t, http.StatusMethodNotAllowed, "method_not_allowed")
	if allow := r.Header.Get("Allow"); allow != "POST" {
		t.Fatalf("GET /api/v1/webhooks/create: Allow %q, want POST", allow)
	}
	s.call(t, "GET", "/api/v1/webhooks/whk_nope", nil).fails(t, http.StatusNotFound, "not_found")
	r = s.call(t, "DELETE", "/api/v1/webhooks", nil)
	r.fails(t, http.StatusMethodNotAllowed, "method_not_allowed")
}

// TestRateLimitsPerKey spends a key's write and read budgets, sees 429 with
// Retry-After (with nothing changed), sees the other key unaffected, then
// moves the clock by Retry-After and is served again.
func TestRateLimitsPerKey(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{api: func(o *api.Options) {
		o.WritePerMinute = 3
		o.ReadPerMinute = 4
	}})
	s.clock.Freeze()
	id := s.create(t, "https://hooks.example.com/a").SubscriptionID // write 1
	s.call(t, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": "x"}).ok(t, http.StatusOK, nil)
	s.call(t, "POST", "/api/v1/webhooks/"+id+"/rotate-secret", nil).ok(t, http.StatusOK, nil) // write 3
	before := s.snapshot(t)
	// Every kind of write now spends from the same empty bucket.
	writes := []struct{ method, path, body string }{
		{"POST", "/api/v1/webhooks/create", `{"url":"https://hooks.example.com/b","events":["auction.bid"]}`},
		{"PUT", "/api/v1/webhooks/" + id, `{"active":false}`},
		{"DELETE", "/api/v1/webhooks/" + id, ""},
		{"POST", "/api/v1/webhooks/" + id + "/test", ""},
		{"POST", "/api/v1/webhooks/" + id + "/recover", `{"since":0}`},
		{"POST", "/api/v1/webhooks/" + id + "/rotate-secret", ""},
		{"POST", "/api/v1/deliveries/x/redeliver", ""},
	}
	var retry int
	for _, w := range writes {
		var body any
		if w.body != "" {
			body = w.body
		}
		r := s.call(t, w.method, w.path, body)
		r.fails(t, http.StatusTooManyRequests, "rate_limited")
		n, err := strconv.Atoi(r.Header.Get("Retry-After"))
		if err != nil || n < 1 || n > 20 {
			t.Fatalf("%s %s: Retry-After %q, want whole seconds up to 20 (60s / 3)", w.method, w.path, r.Header.Get("Retry-After"))
		}
		retry = n
	}
	if after := s.snapshot(t); after != before {
		t.Fatal("rate-limited writes changed the store")
	}
	// Reads have their own budget, untouched by the writes.
	for i := 0; i < 4; i++ {
		s.call(t, "GET", "/api/v1/webhooks/"+id, nil).ok(t, http.StatusOK, nil)
	}
	r := s.call(t, "GET", "/api/v1/webhooks", nil)
	r.fails(t, http.StatusTooManyRequests, "rate_limited")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	// The other key has budgets of its own.
	s.do(t, otherKey, "GET", "/api/v1/webhooks", nil).ok(t, http.StatusOK, nil)
	s.do(t, otherKey, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": "y"}).ok(t, http.StatusOK, nil)
	// Open paths are not limited.
	for i := 0; i < 10; i++ {
		s.do(t, "", "GET", "/healthz", nil).ok(t, http.StatusOK, nil)
	}

	// Refused requests did not push the recovery further out: after
	// Retry-After the key is served again.
	s.clock.Advance(time.Duration(retry) * time.Second)
	s.call(t, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": "z"}).ok(t, http.StatusOK, nil)
	s.call(t, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": "zz"}).fails(t, http.StatusTooManyRequests, "rate_limited")
	s.clock.Advance(time.Minute)
	s.call(t, "GET", "/api/v1/webhooks", nil).ok(t, http.StatusOK, nil)
	for i := 0; i < 3; i++ {
		s.call(t, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": strconv.Itoa(i)}).ok(t, http.StatusOK, nil)
	}
}

func TestDefaultRateLimits(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{api: func(o *api.Options) { o.WritePerMinute, o.ReadPerMinute = 0, 0 }}) // 0: the defaults
	s.clock.Freeze()
	id := s.create(t, "https://hooks.example.com/a").SubscriptionID
	for i := 1; i < 60; i++ {
		s.call(t, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": strconv.Itoa(i)}).ok(t, http.StatusOK, nil)
	}
	s.call(t, "PUT", "/api/v1/webhooks/"+id, map[string]any{"description": "61st"}).fails(t, http.StatusTooManyRequests, "rate_limited")
	for i := 0; i < 100; i++ {
		s.call(t, "GET", "/api/v1/webhooks/"+id, nil).ok(t, http.StatusOK, nil)
	}
	s.call(t, "GET", "/api/v1/webhooks/"+id, nil).fails(t, http.StatusTooManyRequests, "rate_limited")
}
