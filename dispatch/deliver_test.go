package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/syncbuf"
	"github.com/walhook/walhook/mapper"
)

func (b *obBundle) deliveryState(t testing.TB, id string) (status string, attempts int, code int, errText string) {
	t.Helper()
	var c *int
	var e *string
	if err := b.pool.QueryRow(context.Background(), `SELECT status, attempts, last_status_code, last_error
		FROM walhook.deliveries WHERE id = $1`, id).Scan(&status, &attempts, &c, &e); err != nil {
		t.Fatal(err)
	}
	if c != nil {
		code = *c
	}
	if e != nil {
		errText = *e
	}
	return
}

func (b *obBundle) waitStatus(t testing.TB, id, want string) {
	t.Helper()
	obWaitFor(t, "delivery "+id+" "+want, func() bool {
		s, _, _, _ := b.deliveryState(t, id)
		return s == want
	})
}

func TestDeliverSignedEndToEnd(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) { o.Client.UserAgent = "AuctionExcellence-Webhook/1.0" })
	ep := b.endpoint(t, "whk_1", rc.URL+"/hook", nil, nil, true)
	ev := obEvent("problem.created", "A1")
	obAppend(t, d, 10, ev)
	obRun(t, d)
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	b.waitStatus(t, id, "delivered")

	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("receiver got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	wh, err := standardwebhooks.NewWebhook(obSecret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(r.Body, r.Header); err != nil {
		t.Fatalf("Standard Webhooks library refused our request: %v", err)
	}
	if want := ev.Body(id); string(r.Body) != string(want) {
		t.Fatalf("body %s, want %s", r.Body, want)
	}
	for k, want := range map[string]string{
		"X-Webhook-ID": id, "webhook-id": id, "X-Webhook-Event": "problem.created",
		"Content-Type": "application/json", "User-Agent": "AuctionExcellence-Webhook/1.0",
	} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	for _, p := range [][2]string{{"X-Webhook-Timestamp", "webhook-timestamp"}, {"X-Webhook-Signature", "webhook-signature"}} {
		if r.Header.Get(p[0]) != r.Header.Get(p[1]) || r.Header.Get(p[0]) == "" {
			t.Errorf("%s %q and %s %q differ", p[0], r.Header.Get(p[0]), p[1], r.Header.Get(p[1]))
		}
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1 AND attempt = 1 AND status_code = 200`, id); n != 1 {
		t.Fatalf("attempt log has %d rows for the delivery, want 1", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND last_success_at IS NOT NULL AND failing_since IS NULL`, ep); n != 1 {
		t.Fatal("endpoint's last success not recorded")
	}
}

func TestDeliverSignsWithPreviousSecretDuringOverlap(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, nil)
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	newSecret := NewSecret()
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.endpoints SET secret = $1, previous_secret = $2,
		previous_secret_until = now() + interval '1 hour' WHERE id = $3`, newSecret, obSecret, ep); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	obRun(t, d)
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	b.waitStatus(t, id, "delivered")
	r := rc.requests()[0]
	for _, s := range []string{newSecret, obSecret} {
		wh, _ := standardwebhooks.NewWebhook(s)
		if err := wh.Verify(r.Body, r.Header); err != nil {
			t.Errorf("a receiver holding one of the two secrets refused: %v", err)
		}
	}
	if n := strings.Count(r.Header.Get("webhook-signature"), "v1,"); n != 2 {
		t.Fatalf("%d signatures, want 2 during the overlap", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1 AND signed_by = 2`, id); n != 1 {
		t.Fatal("attempt log does not record two signatures")
	}
}

func TestDeliverRetries500Then200(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			w.WriteHeader(500)
			w.Write([]byte("boom \x00\xff"))
			return 0
		}
		return 200
	})
	d, b := obSetup(t, func(o *Options) {
		o.Retry = RetryPolicy{Schedule: []time.Duration{0, 50 * time.Millisecond, time.Millisecond}}
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	obRun(t, d)
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	b.waitStatus(t, id, "delivered")
	_, attempts, code, _ := b.deliveryState(t, id)
	if attempts != 2 || code != 200 {
		t.Fatalf("attempts %d, last code %d; want 2 attempts ending in 200", attempts, code)
	}
	reqs := rc.requests()
	if len(reqs) != 2 || reqs[0].Header.Get("webhook-id") != reqs[1].Header.Get("webhook-id") {
		t.Fatalf("want 2 requests with one webhook-id, got %d", len(reqs))
	}
	// Never earlier than the schedule (a lower bound, not a speed check).
	if gap := reqs[1].At.Sub(reqs[0].At); gap < 50*time.Millisecond {
		t.Fatalf("retry came %v after the failure, schedule says 50ms", gap)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1 AND attempt = 1 AND status_code = 500
		AND error LIKE '%500%' AND response_body LIKE 'boom%'`, id); n != 1 {
		t.Fatal("first attempt (500, body prefix) not in the delivery log")
	}
}

func TestDeliverHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			w.Header().Set("Retry-After", "1")
			return 429
		}
		return 204
	})
	d, b := obSetup(t, func(o *Options) {
		o.Retry = RetryPolicy{Schedule: []time.Duration{0, time.Millisecond}}
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	obRun(t, d)
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	b.waitStatus(t, id, "delivered")
	reqs := rc.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < time.Second {
		t.Fatalf("retry %v after a 429 with Retry-After: 1, want at least 1s", gap)
	}
}

func TestDeliver410DisablesEndpoint(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return 410 })
	var logs syncbuf.Buffer
	d, b := obSetup(t, func(o *Options) {
		o.Workers = 1
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	ev1, ev2 := obEvent("a.b", ""), obEvent("a.b", "")
	obAppend(t, d, 10, ev1, ev2)
	obRun(t, d)
	obWaitFor(t, "endpoint disabled", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND NOT active
			AND disabled_reason = 'receiver answered 410 Gone' AND disabled_at IS NOT NULL`, ep) == 1
	}) // the reason is logged and shown: never the URL, which may carry a token
	// Both deliveries are kept as skipped (recoverable), none failed.
	obWaitFor(t, "deliveries skipped", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'skipped'`, ep) == 2
	})
	if rc.n() != 1 {
		t.Fatalf("receiver got %d requests after a 410, want 1", rc.n())
	}
	// The log says the endpoint is disabled, not that its deliveries are
	// retried (they are skipped).
	if l := logs.String(); strings.Contains(l, "retrying") || !strings.Contains(l, `msg="endpoint disabled"`) {
		t.Errorf("the log after a 410 says a retry, or not the disable:\n%s", l)
	}
	// New events for the disabled endpoint are stored as skipped.
	ev3 := obEvent("a.b", "")
	obAppend(t, d, 20, ev3)
	s, _, _, _ := b.deliveryState(t, mapper.DeliveryID(ev3.Envelope, ev3.ID, ep))
	if s != "skipped" {
		t.Fatalf("delivery to a disabled endpoint is %s, want skipped", s)
	}
}

func TestDeliverTimeoutRedirectAndBlockedAddress(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	hang := obNewReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return 200
	})
	t.Cleanup(func() { close(release) })
	target := obNewReceiver(t, nil)
	redirect := obNewReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) int {
		w.Header().Set("Location", target.URL)
		return 302
	})
	d, b := obSetup(t, func(o *Options) {
		// Long enough for the redirect's answer on a loaded machine: the
		// hanging receiver waits it out whatever it is.
		o.Client.Timeout = 5 * time.Second
		o.Retry = RetryPolicy{Schedule: []time.Duration{0}}
	})
	epHang := b.endpoint(t, "hang", hang.URL, nil, nil, true)
	epRedirect := b.endpoint(t, "redirect", redirect.URL, nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	obRun(t, d)

	idHang := mapper.DeliveryID(ev.Envelope, ev.ID, epHang)
	b.waitStatus(t, idHang, "failed")
	if _, _, code, errText := b.deliveryState(t, idHang); code != 0 || !strings.Contains(errText, "timeout") {
		t.Errorf("hanging receiver: code %d error %q, want a timeout", code, errText)
	}
	idRedirect := mapper.DeliveryID(ev.Envelope, ev.ID, epRedirect)
	b.waitStatus(t, idRedirect, "failed")
	if _, _, code, errText := b.deliveryState(t, idRedirect); code != 302 || !strings.Contains(errText, "redirect") {
		t.Errorf("redirect: code %d error %q, want 302 and a redirect error", code, errText)
	}
	if target.n() != 0 {
		t.Error("the redirect was followed")
	}

	// Without the loopback allowlist the same receiver is refused, and
	// the refusal is permanent: no retries.
	d2, b2 := obSetup(t, func(o *Options) {
		o.Client = ClientOptions{AllowHTTP: true}
		o.Retry = RetryPolicy{Schedule: []time.Duration{0, time.Millisecond, time.Millisecond}}
	})
	if err := d2.ValidateURL(target.URL); err == nil {
		t.Error("ValidateURL accepted a loopback URL without the allowlist")
	}
	if err := d2.SyncStaticEndpoints(context.Background(), []StaticEndpoint{{Name: "x", URL: target.URL, Secret: obSecret}}); err == nil {
		t.Error("a loopback static endpoint was accepted without the allowlist")
	}
	epBlocked := b2.endpoint(t, "blocked", target.URL, nil, nil, true)
	obAppend(t, d2, 10, ev)
	obRun(t, d2)
	idBlocked := mapper.DeliveryID(ev.Envelope, ev.ID, epBlocked)
	b2.waitStatus(t, idBlocked, "failed")
	if _, attempts, _, errText := b2.deliveryState(t, idBlocked); attempts != 1 || !strings.Contains(errText, "blocked") {
		t.Errorf("private address: %d attempts, error %q; want 1 attempt refused as blocked", attempts, errText)
	}
	if target.n() != 0 {
		t.Error("a private address was dialled")
	}
	if n := b2.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1 AND signed_by = 0`, idBlocked); n != 1 {
		t.Errorf("the refused attempt is logged with %d rows of 0 signatures, want 1 (nothing was sent)", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1 AND signed_by = 1`, idRedirect); n != 1 {
		t.Errorf("the redirected attempt is logged with %d rows of 1 signature, want 1", n)
	}
}

// One dead endpoint (it never answers) must not hold up a healthy one: the
// per-endpoint in-flight cap keeps workers free for it.
func TestDeliverDeadEndpointDoesNotDelayHealthy(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	dead := obNewReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return 503
	})
	t.Cleanup(free)
	healthy := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) {
		o.Workers = 4
		o.MaxInFlightPerEndpoint = 2
		o.BatchSize = 4
		o.Client.Timeout = time.Minute
	})
	epDead := b.endpoint(t, "dead", dead.URL, nil, nil, true)
	// The dead endpoint's deliveries come first in due order.
	var deadEvents []mapper.Event
	for range 20 {
		deadEvents = append(deadEvents, obEvent("x.dead", ""))
	}
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.endpoints SET events = '{x.dead}' WHERE id = $1`, epDead); err != nil {
		t.Fatal(err)
	}
	obAppend(t, d, 10, deadEvents...)
	epHealthy := b.endpoint(t, "healthy", healthy.URL, []string{"x.ok"}, nil, true)
	var okEvents []mapper.Event
	for range 50 {
		okEvents = append(okEvents, obEvent("x.ok", ""))
	}
	obAppend(t, d, 20, okEvents...)
	obRun(t, d)

	obWaitFor(t, "healthy deliveries", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'delivered'`, epHealthy) == 50
	})
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status IN ('pending', 'delivering')`, epDead); n != 20 {
		t.Fatalf("dead endpoint: %d deliveries still open, want all 20", n)
	}
	if n := dead.n(); n > 2 {
		t.Fatalf("dead endpoint got %d concurrent requests, cap is 2", n)
	}
	free()
}

func TestTwoDispatchersDeliverEachOnce(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	d1, b := obSetup(t, func(o *Options) { o.InstanceID = "one"; o.BatchSize = 5 })
	d2 := b.dispatcher(t, func(o *Options) { o.InstanceID = "two"; o.BatchSize = 5 })
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d1)
	obRun(t, d2)
	const n = 300
	var evs []mapper.Event
	for i := range n {
		evs = append(evs, obEvent("a.b", ""))
		if len(evs) == 20 {
			obAppend(t, d1, LSNfor(i), evs...)
			evs = nil
		}
	}
	obWaitFor(t, "all delivered", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'delivered'`, ep) == n
	})
	seen := map[string]int{}
	for _, r := range rc.requests() {
		seen[r.Header.Get("webhook-id")]++
	}
	if len(seen) != n {
		t.Fatalf("receiver saw %d distinct ids, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("delivery %s received %d times", id, c)
		}
	}
	if b.count(t, `SELECT count(*) FROM walhook.attempts`) != n {
		t.Error("attempt log does not hold exactly one attempt per delivery")
	}
}

func LSNfor(i int) cdc.LSN { return cdc.LSN(1000 + i) }

// A process that claims and then dies: its claims are rescued once the
// lease runs out and delivered by another process.
func TestLeaseRescueAfterCrash(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	// Leases longer than the test: the crashed claim's runs out when the
	// test says so, and the rescuer's never does.
	crashed, b := obSetup(t, func(o *Options) { o.InstanceID = "crashed"; o.Lease = time.Minute })
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, crashed, 10, ev)
	cs, _, err := crashed.claim(context.Background(), 10, &inflight{})
	if err != nil || len(cs) != 1 {
		t.Fatalf("claim = %d, %v; want 1", len(cs), err)
	}
	// A second claim while the lease holds takes nothing.
	if cs2, _, err := crashed.claim(context.Background(), 10, &inflight{}); err != nil || len(cs2) != 0 {
		t.Fatalf("claimed a leased delivery again: %d, %v", len(cs2), err)
	}
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	// The crashed process never records anything; its lease runs out.
	// Another one rescues.
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.deliveries SET locked_until = now() - interval '1 second'
		WHERE id = $1 AND locked_by = 'crashed'`, id); err != nil {
		t.Fatal(err)
	}
	other := b.dispatcher(t, func(o *Options) { o.InstanceID = "other"; o.Lease = time.Minute })
	obRun(t, other)
	b.waitStatus(t, id, "delivered")
	if _, attempts, _, _ := b.deliveryState(t, id); attempts != 2 {
		t.Fatalf("attempts = %d, want 2 (the crashed claim counts)", attempts)
	}
	if rc.n() != 1 {
		t.Fatalf("receiver got %d requests, want 1", rc.n())
	}
}

func TestReleaseOnStopRefundsClaims(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) { o.InstanceID = "me" })
	b.endpoint(t, "whk_1", "https://x.example/", nil, nil, true)
	obAppend(t, d, 10, obEvent("a.b", ""), obEvent("a.b", ""))
	cs, _, err := d.claim(context.Background(), 10, &inflight{})
	if err != nil || len(cs) != 2 {
		t.Fatalf("claim = %d, %v", len(cs), err)
	}
	n, err := d.release(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("release = %d, %v; want 2", n, err)
	}
	if c := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'pending' AND attempts = 0 AND locked_by IS NULL`); c != 2 {
		t.Fatalf("%d deliveries back to pending with the attempt refunded, want 2", c)
	}

	// A claim whose attempt was made but whose outcome could not be
	// written keeps the attempt: the receiver may have it already.
	cs, _, err = d.claim(context.Background(), 10, &inflight{})
	if err != nil || len(cs) != 2 {
		t.Fatalf("claim again = %d, %v", len(cs), err)
	}
	d.noteUnrecorded(cs[0])
	if n, err := d.release(context.Background()); err != nil || n != 2 {
		t.Fatalf("release = %d, %v; want 2", n, err)
	}
	for _, c := range cs {
		want := 0
		if c.id == cs[0].id {
			want = 1
		}
		if got := b.count(t, `SELECT attempts FROM walhook.deliveries WHERE id = $1 AND status = 'pending'`, c.id); got != want {
			t.Errorf("delivery %s released with %d attempts, want %d", c.id, got, want)
		}
	}
}

func TestDisableRuleNeedsWindowAndCount(t *testing.T) {
	t.Parallel()
	fail := true
	var mu sync.Mutex
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return 500
		}
		return 200
	})
	d, b := obSetup(t, func(o *Options) {
		o.Retry = RetryPolicy{Schedule: []time.Duration{0}}
		o.DisableWindow = time.Hour
		o.DisableMinFailed = 3
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d)
	ctx := context.Background()
	failAll := func(k int) {
		t.Helper()
		var evs []mapper.Event
		for range k {
			evs = append(evs, obEvent("a.b", ""))
		}
		obAppend(t, d, 10, evs...)
		for _, e := range evs {
			id := mapper.DeliveryID(e.Envelope, e.ID, ep)
			obWaitFor(t, "delivery finished", func() bool {
				s, _, _, _ := b.deliveryState(t, id)
				return s == "failed" || s == "skipped"
			})
		}
	}
	active := func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND active`, ep) == 1
	}

	// A burst: many failures, but failing for less than the window.
	failAll(5)
	if !active() {
		t.Fatal("a burst of failures disabled the endpoint")
	}
	if b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND failing_since IS NOT NULL`, ep) != 1 {
		t.Fatal("failing_since not set")
	}
	// A 2xx resets the failure state.
	mu.Lock()
	fail = false
	mu.Unlock()
	e := obEvent("a.b", "")
	obAppend(t, d, 20, e)
	b.waitStatus(t, mapper.DeliveryID(e.Envelope, e.ID, ep), "delivered")
	if b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND failing_since IS NULL`, ep) != 1 {
		t.Fatal("a 2xx did not reset failing_since")
	}
	mu.Lock()
	fail = true
	mu.Unlock()

	// Failing for longer than the window, but too few exhausted in it.
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.deliveries SET updated_at = now() - interval '2 hours' WHERE status = 'failed'`); err != nil {
		t.Fatal(err)
	}
	failAll(1)
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET failing_since = now() - interval '2 hours' WHERE id = $1`, ep); err != nil {
		t.Fatal(err)
	}
	failAll(1)
	if !active() {
		t.Fatal("disabled with only 2 deliveries failed within the window")
	}
	// The third exhausted delivery within the window trips it (the disable
	// commits right after the delivery's outcome, in its own transaction).
	failAll(1)
	obWaitFor(t, "disabled after no 2xx for the window and 3 failed deliveries", func() bool { return !active() })
	if b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND disabled_reason LIKE 'no 2xx since%' AND disabled_at IS NOT NULL`, ep) != 1 {
		t.Fatal("disable reason or time missing")
	}
}

func TestDisableNever(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return 500 })
	d, b := obSetup(t, func(o *Options) {
		o.Retry = RetryPolicy{Schedule: []time.Duration{0}}
		o.DisableNever = true
		o.DisableMinFailed = 1
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.endpoints SET failing_since = now() - interval '48 hours'`); err != nil {
		t.Fatal(err)
	}
	e := obEvent("a.b", "")
	obAppend(t, d, 10, e)
	obRun(t, d)
	b.waitStatus(t, mapper.DeliveryID(e.Envelope, e.ID, ep), "failed")
	if b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE active`) != 1 {
		t.Fatal("DisableNever endpoint was disabled")
	}
}

func TestRetentionDeletesOnlyOldFinishedRows(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) { o.Retention = time.Hour })
	ep := b.endpoint(t, "whk_1", "https://x.example/", nil, nil, true)
	ctx := context.Background()
	mk := func(status string, age string) mapper.Event {
		e := obEvent("a.b", "")
		obAppend(t, d, 10, e)
		id := mapper.DeliveryID(e.Envelope, e.ID, ep)
		if _, err := b.pool.Exec(ctx, `UPDATE walhook.deliveries SET status = $2, updated_at = now() - $3::interval WHERE id = $1`, id, status, age); err != nil {
			t.Fatal(err)
		}
		if _, err := b.pool.Exec(ctx, `UPDATE walhook.events SET created_at = now() - $2::interval WHERE id = $1`, e.ID, age); err != nil {
			t.Fatal(err)
		}
		if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration_ms) VALUES ($1, 1, now(), 1)`, id); err != nil {
			t.Fatal(err)
		}
		return e
	}
	var gone, kept []mapper.Event
	for _, s := range []string{"delivered", "failed", "skipped"} {
		gone = append(gone, mk(s, "2 hours"))
		kept = append(kept, mk(s, "10 minutes"))
	}
	kept = append(kept, mk("pending", "2 hours"))
	// An old event without deliveries is an orphan.
	orphan := obEvent("a.b", "")
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Events: []mapper.Event{orphan}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `DELETE FROM walhook.deliveries WHERE event_id = $1`, orphan.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.events SET created_at = now() - interval '2 hours' WHERE id = $1`, orphan.ID); err != nil {
		t.Fatal(err)
	}
	gone = append(gone, orphan)

	n, more, err := d.deleteExpired(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if n != 7 || more {
		t.Errorf("deleted %d rows, want 3 deliveries + 4 events", n)
	}
	for _, e := range gone {
		if b.count(t, `SELECT count(*) FROM walhook.events WHERE id = $1`, e.ID) != 0 {
			t.Errorf("old event %s kept", e.ID)
		}
	}
	for _, e := range kept {
		if b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1`, e.ID) != 1 {
			t.Errorf("delivery of %s deleted", e.ID)
		}
	}
	if c := b.count(t, `SELECT count(*) FROM walhook.attempts`); c != 4 {
		t.Errorf("%d attempts left, want the 4 of kept deliveries", c)
	}

	// A large history goes over several passes: one whose budget has
	// run out starts no further batch and says rows are left.
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, updated_at)
		SELECT 'old-' || g, 'ev-old', $1, 'a.b', 'delivered', 1, now() - interval '2 hours'
		FROM generate_series(1, $2::int) g`, ep, 2*retentionBatch+500); err != nil {
		t.Fatal(err)
	}
	var passes int
	for more = true; more; passes++ {
		if n, more, err = d.deleteExpired(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if more && n != retentionBatch {
			t.Fatalf("a pass without budget deleted %d rows, want one batch of %d", n, retentionBatch)
		}
	}
	if passes != 3 || b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE id LIKE 'old-%'`) != 0 {
		t.Errorf("%d passes, want 3, and every old row gone", passes)
	}
}

// A test send is never retried and never counts toward the disable rule:
// not when Run stops while it is in flight (Run's release leaves it to
// the request that makes it, which records its outcome), and not when
// its process dies first (the lease rescue ends it failed, not pending).
func TestSendTestIsNeverRetried(t *testing.T) {
	t.Parallel()
	answer := make(chan struct{})
	rc := obNewReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			<-answer
		}
		return http.StatusInternalServerError
	})
	d, b := obSetup(t, func(o *Options) {
		o.Lease = 300 * time.Millisecond
		o.DisableWindow = time.Millisecond
		o.DisableMinFailed = 1
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	stop := obRun(t, d)
	sent := make(chan TestResult, 1)
	go func() {
		res, err := d.SendTest(context.Background(), ep)
		if err != nil {
			t.Error(err)
		}
		sent <- res
	}()
	obWaitFor(t, "the test request", func() bool { return rc.n() == 1 })
	stop()
	close(answer)
	res := <-sent
	if res.StatusCode != http.StatusInternalServerError {
		t.Fatalf("SendTest = %+v, want the receiver's 500", res)
	}
	if s, attempts, _, _ := b.deliveryState(t, res.DeliveryID); s != "failed" || attempts != 1 {
		t.Errorf("test delivery %s after %d attempts once Run stopped, want failed after 1", s, attempts)
	}

	// A test send whose process died while sending it.
	for _, sql := range []string{`INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
		VALUES ('test:00', 'webhook.test', 'sns', now(), '{}')`,
		`INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, locked_by, locked_until)
		VALUES ('dead-test', 'test:00', 'whk_1', 'webhook.test', 'delivering', 1, 'dead', now() - interval '1 second')`} {
		if _, err := b.pool.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
	// Another process runs on: it rescues the test send as failed and
	// sends nothing.
	other := b.dispatcher(t, func(o *Options) {
		o.InstanceID = "other"
		o.Lease = 300 * time.Millisecond
		o.Retry = RetryPolicy{Schedule: []time.Duration{0}}
		o.DisableWindow = time.Hour
		o.DisableMinFailed = 2
	})
	obRun(t, other)
	b.waitStatus(t, "dead-test", "failed")
	var lastError string
	if err := b.pool.QueryRow(context.Background(), `SELECT last_error FROM walhook.deliveries WHERE id = 'dead-test'`).Scan(&lastError); err != nil {
		t.Fatal(err)
	}
	if lastError != testAbandoned {
		t.Errorf("rescued test send: last_error %q, want %q", lastError, testAbandoned)
	}
	time.Sleep(500 * time.Millisecond)
	if n := rc.n(); n != 1 {
		t.Errorf("the receiver got %d requests, want the 1 test request: a test send was retried", n)
	}
	// The two failed test sends do not count toward the disable rule: one
	// ordinary delivery that fails for good is one failure, not the two
	// the rule wants here.
	if _, err := b.pool.Exec(context.Background(), `UPDATE walhook.endpoints SET failing_since = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	obAppend(t, other, 10, ev)
	b.waitStatus(t, mapper.DeliveryID(ev.Envelope, ev.ID, ep), "failed")
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE active`); n != 1 {
		t.Error("failed test sends disabled the endpoint")
	}
}

func TestSendTest(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, nil)
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, false) // a disabled endpoint can be tested
	res, err := d.SendTest(context.Background(), ep)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Error != "" || res.DeliveryID == "" {
		t.Fatalf("SendTest = %+v, want 200", res)
	}
	if s, attempts, _, _ := b.deliveryState(t, res.DeliveryID); s != "delivered" || attempts != 1 {
		t.Fatalf("test delivery %s after %d attempts, want delivered after 1", s, attempts)
	}
	r := rc.requests()[0]
	wh, _ := standardwebhooks.NewWebhook(obSecret)
	if err := wh.Verify(r.Body, r.Header); err != nil || r.Header.Get("X-Webhook-Event") != TestEventType {
		t.Fatalf("test request: verify %v, event %q", err, r.Header.Get("X-Webhook-Event"))
	}
	if _, err := d.SendTest(context.Background(), "whk_nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SendTest of an unknown endpoint = %v, want ErrNotFound", err)
	}

}

// An attempt whose lease ran out while it was sending (the rescue made
// the row pending and this same process claimed it again) must not
// record its outcome over the new claim: a 500 would put the row back to
// pending while the new attempt is still out, and a third send follow,
// all without a crash. Outcomes, the batched 2xx and hand-backs are
// fenced by the lease their claim set.
func TestOldAttemptDoesNotOverwriteANewClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b, id, first := claimAndLoseTheLease(t)
	// This process claims it again while the first attempt is still out.
	second, _, err := d.claim(ctx, 10, &inflight{})
	if err != nil || len(second) != 1 || second[0].attempt != first[0].attempt+1 {
		t.Fatalf("second claim = %+v, %v", second, err)
	}
	state := func() string {
		var status, lockedBy string
		var attempts int
		if err := b.pool.QueryRow(ctx, `SELECT status, coalesce(locked_by, ''), attempts FROM walhook.deliveries WHERE id = $1`, id).
			Scan(&status, &lockedBy, &attempts); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%s/%s/%d", status, lockedBy, attempts)
	}
	want := "delivering/me/2"

	// The first attempt's 500, its 2xx through the recorder, and a
	// hand-back of it: none touches the second claim.
	res500 := Result{StatusCode: http.StatusInternalServerError, Duration: time.Millisecond}
	if err := d.record(ctx, first[0], time.Now(), res500, d.decide(first[0], res500)); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != want {
		t.Fatalf("after the old attempt's 500: %s, want %s", got, want)
	}
	if err := d.recordSuccesses(ctx, []success{{c: first[0], started: time.Now(), res: Result{StatusCode: http.StatusOK}}}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != want {
		t.Fatalf("after the old attempt's 2xx: %s, want %s", got, want)
	}
	if n, err := d.releaseIDs(ctx, first, "pending"); err != nil || n != 0 {
		t.Fatalf("hand-back of the old claim = %d, %v; want 0", n, err)
	}
	if got := state(); got != want {
		t.Fatalf("after the old claim's hand-back: %s, want %s", got, want)
	}
	// Both attempts happened and are logged; the second claim's own
	// outcome still lands.
	if err := d.recordSuccesses(ctx, []success{{c: second[0], started: time.Now(), res: Result{StatusCode: http.StatusOK}}}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != "delivered//2" {
		t.Fatalf("after the second attempt's 2xx: %s, want delivered", got)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1`, id); n != 3 {
		t.Errorf("%d attempts logged, want 3 (the old 500 and 2xx, the new 2xx)", n)
	}
}

// Retention does not delete a finished delivery that a redeliver
// requeues, and does not wait for it: it passes over rows another
// transaction holds (they are looked at again next pass).
func TestRetentionSparesARequeuedDelivery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b := obSetup(t, func(o *Options) { o.Retention = time.Hour })
	ep := b.endpoint(t, "whk_1", "https://x.example/", nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.deliveries SET status = 'delivered', locked_by = NULL,
		updated_at = now() - interval '2 hours' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	// A redeliver holds the row and requeues it.
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE walhook.deliveries SET status = 'pending', attempts = 0, updated_at = now() WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if n := retentionWithoutWaiting(t, d, b); n != 0 {
		t.Errorf("retention deleted %d rows, want 0 (the one row is held)", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _, err := d.deleteExpired(ctx, time.Minute); err != nil || n != 0 {
		t.Errorf("retention after the redeliver = %d, %v; want 0", n, err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE id = $1 AND status = 'pending'`, id); n != 1 {
		t.Error("retention deleted a delivery a redeliver had requeued")
	}
}

// Retention and an admin call that holds some of the rows it would delete
// (a recover of a dead endpoint's failed deliveries past retention) took
// the rows in different orders (retention by updated_at, the recover in
// the order its plan read them), and each could wait for a row the other
// held: PostgreSQL then aborted one of them after deadlock_timeout (the
// recover's caller got an error). Retention now passes over rows another
// transaction holds, so it never waits for a row lock.
func TestRetentionAndRecoverDoNotDeadlock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b := obSetup(t, func(o *Options) { o.Retention = time.Hour })
	ep := b.endpoint(t, "whk_1", "https://x.example/", nil, nil, true)
	first, second := obEvent("a.b", ""), obEvent("a.b", "")
	obAppend(t, d, 10, first, second)
	older, newer := mapper.DeliveryID(first.Envelope, first.ID, ep), mapper.DeliveryID(second.Envelope, second.ID, ep)
	// Both failed before retention: retention takes the older first.
	for id, age := range map[string]string{older: "3 hours", newer: "2 hours"} {
		if _, err := b.pool.Exec(ctx, `UPDATE walhook.deliveries SET status = 'failed', locked_by = NULL, locked_until = NULL,
			updated_at = now() - $2::interval WHERE id = $1`, id, age); err != nil {
			t.Fatal(err)
		}
	}
	// The recover requeues the newer row first and holds it.
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE walhook.deliveries SET status = 'pending', attempts = 0, updated_at = now() WHERE id = $1`, newer); err != nil {
		t.Fatal(err)
	}
	if n := retentionWithoutWaiting(t, d, b); n != 1 {
		t.Errorf("retention deleted %d deliveries, want 1 (the older; the newer is held)", n)
	}
	// The recover goes on to the older row, which retention deleted: no
	// wait, nothing to update.
	tag, err := tx.Exec(ctx, `UPDATE walhook.deliveries SET status = 'pending', attempts = 0, updated_at = now() WHERE id = $1`, older)
	if err != nil {
		t.Fatalf("the recover's second row: %v", err)
	}
	if tag.RowsAffected() != 0 {
		t.Errorf("the recover updated %d rows of a delivery retention deleted", tag.RowsAffected())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _, _, _ := b.deliveryState(t, newer); s != "pending" {
		t.Errorf("the recovered delivery is %q, want pending", s)
	}
}

// retentionWithoutWaiting runs a retention pass and fails the test if
// it waits for a row lock instead of returning. It returns how many
// deliveries the pass deleted (events and attempts not counted).
func retentionWithoutWaiting(t *testing.T, d *Dispatcher, b *obBundle) int {
	t.Helper()
	before := b.count(t, `SELECT count(*) FROM walhook.deliveries`)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _, err := d.deleteExpired(ctx, time.Minute)
		done <- err
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("retention: %v", err)
			}
			return before - b.count(t, `SELECT count(*) FROM walhook.deliveries`)
		default:
		}
		var waiting int
		if err := b.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%DELETE FROM%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			cancel()
			<-done
			t.Fatal("retention waited for a row lock another transaction holds")
		}
		if time.Now().After(deadline) {
			t.Fatal("retention did not return")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The same with a redeliver between the two claims: it resets the
// attempt count, so the second claim counts the same attempt as the
// first, and only the lease each claim set tells them apart.
func TestOldAttemptDoesNotOverwriteAClaimAfterARedeliver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b, id, first := claimAndLoseTheLease(t)
	if _, err := NewAdmin(b.pool, "walhook", d).Redeliver(ctx, id); err != nil {
		t.Fatal(err)
	}
	second, _, err := d.claim(ctx, 10, &inflight{})
	if err != nil || len(second) != 1 || second[0].attempt != first[0].attempt {
		t.Fatalf("second claim = %+v, %v; want the same attempt number as the first", second, err)
	}
	res500 := Result{StatusCode: http.StatusInternalServerError, Duration: time.Millisecond}
	if err := d.record(ctx, first[0], time.Now(), res500, d.decide(first[0], res500)); err != nil {
		t.Fatal(err)
	}
	if n, err := d.releaseIDs(ctx, first, "pending"); err != nil || n != 0 {
		t.Fatalf("hand-back of the old claim = %d, %v; want 0", n, err)
	}
	if err := d.recordSuccesses(ctx, []success{{c: second[0], started: time.Now(), res: Result{StatusCode: http.StatusOK}}}); err != nil {
		t.Fatal(err)
	}
	if s, _, _, _ := b.deliveryState(t, id); s != "delivered" {
		t.Fatalf("after the old attempt's 500 and the new one's 2xx: %s, want delivered", s)
	}
}

// The lease rescue passes over an expired delivery another transaction
// holds instead of waiting for it (a release or an outcome changing
// several, in an order of their own, could deadlock with it), and takes
// it at a later pass.
func TestRescuePassesOverHeldRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b := obSetup(t, nil)
	b.endpoint(t, "whk_1", "https://x.example/", nil, nil, true)
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, locked_by, locked_until)
		SELECT 'd' || i, 'e' || i, 'whk_1', 'a.b', 'delivering', 1, 'dead', now() - interval '1 second' FROM generate_series(1, 3) i`); err != nil {
		t.Fatal(err)
	}
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id = 'd2' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n, err := d.rescue(rctx); err != nil || n != 2 {
		t.Fatalf("rescue beside a held row = %d, %v; want 2 (it waited for the held one before)", n, err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := d.rescue(ctx); err != nil || n != 1 {
		t.Fatalf("the next rescue = %d, %v; want the third", n, err)
	}
}

// claimAndLoseTheLease appends one delivery, claims it as process "me"
// and lets the lease run out: the rescue has made it pending again while
// the claim's attempt may still be out. It returns the delivery's id and
// that first claim.
func claimAndLoseTheLease(t *testing.T) (*Dispatcher, *obBundle, string, []claimed) {
	t.Helper()
	ctx := context.Background()
	d, b := obSetup(t, func(o *Options) { o.InstanceID = "me" })
	ep := b.endpoint(t, "whk_1", "https://x.example/", nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	first, _, err := d.claim(ctx, 10, &inflight{})
	if err != nil || len(first) != 1 {
		t.Fatalf("claim = %d, %v", len(first), err)
	}
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.deliveries SET locked_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if n, err := d.rescue(ctx); err != nil || n != 1 {
		t.Fatalf("rescue = %d, %v", n, err)
	}
	return d, b, mapper.DeliveryID(ev.Envelope, ev.ID, ep), first
}
