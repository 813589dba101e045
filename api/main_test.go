package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapper"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The keys every stack accepts.
const (
	testKey  = "sk_test_first_0123456789"
	otherKey = "sk_test_second_9876543210"
)

// testCatalog is the mapping's catalog the API validates event filters
// against: seed 004's types plus one of seed 000's.
var testCatalog = []api.CatalogEntry{
	{Type: "auction.created", Description: "a new auction"},
	{Type: "auction.bid", Description: "a bid"},
	{Type: "auction.bid.extended", Description: "snipe protection extended the end"},
	{Type: "auction.settled", Description: "settled with a winner"},
	{Type: "auction.cancelled", Description: "cancelled by the seller"},
	{Type: "problem.created", Description: "a problem was reported"},
}

// stack is the real thing in one process: a fresh store, a running
// Dispatcher with a loopback-permitting client, and the API served on a
// loopback listener by api.Serve.
type stack struct {
	url   string
	pool  *pgxpool.Pool
	dsn   string
	d     *dispatch.Dispatcher
	reg   *prometheus.Registry
	clock *clock
}

// stackConfig changes a stack before it starts.
type stackConfig struct {
	api      func(*api.Options)
	dispatch func(*dispatch.Options)
	// noRun leaves the dispatcher's workers stopped (SendTest still works:
	// it sends from the request).
	noRun bool
}

// clock is the API's clock for envelopes and rate limits: real time until
// Freeze, then only Advance moves it (rate-limit tests must not see tokens
// refill while they run).
type clock struct {
	mu     sync.Mutex
	frozen time.Time
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.frozen.IsZero() {
		return c.frozen.Add(c.offset)
	}
	return time.Now().Add(c.offset)
}

func (c *clock) Freeze() {
	c.mu.Lock()
	c.frozen = time.Now()
	c.mu.Unlock()
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newStack(t *testing.T, cfg stackConfig) *stack {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dsn := pgtest.Shared(t).NewDatabase(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := dispatch.Migrate(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dopts := dispatch.Options{
		Schema:     "walhook",
		Logger:     log.With("component", "dispatch"),
		Registerer: reg,
		// Loopback receivers are allowlisted like an internal receiver
		// would be; everything else follows the production policy
		// (https only, private ranges refused).
		Client:       dispatch.ClientOptions{Timeout: 5 * time.Second, Allow: []string{"127.0.0.0/8"}},
		Retry:        dispatch.RetryPolicy{Schedule: []time.Duration{0, 10 * time.Millisecond, 20 * time.Millisecond}},
		PollInterval: 50 * time.Millisecond,
		Workers:      4,
	}
	if cfg.dispatch != nil {
		cfg.dispatch(&dopts)
	}
	d, err := dispatch.New(pool, dopts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if !cfg.noRun {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Run(ctx); err != nil {
				t.Errorf("dispatcher Run: %v", err)
			}
		}()
	}
	c := &clock{}
	aopts := api.Options{
		Keys:       []api.Key{{Name: "first", Key: testKey}, {Name: "second", Key: otherKey}},
		Catalog:    testCatalog,
		Admin:      dispatch.NewAdmin(pool, "walhook", d),
		Gatherer:   reg,
		Registerer: reg,
		Logger:     log.With("component", "api"),
		Now:        c.Now,
		// Far above the defaults: tests poll the API while they wait (a
		// slow run under -race reached the 100 GETs a minute waiting for
		// a 410 to disable an endpoint). The rate-limit tests set theirs.
		WritePerMinute: 1_000_000,
		ReadPerMinute:  1_000_000,
	}
	if cfg.api != nil {
		cfg.api(&aopts)
	}
	srv, err := api.New(aopts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("api Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &stack{url: "http://" + ln.Addr().String(), pool: pool, dsn: dsn, d: d, reg: reg, clock: c}
}

// response is a decoded envelope.
type response struct {
	Status  int
	Header  http.Header
	Raw     []byte
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Timestamp *int64 `json:"timestamp"`
}

// do sends a request with key (none when empty) and decodes the envelope,
// failing the test when the response is not one.
func (s *stack) do(t *testing.T, key, method, path string, body any) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := response{Status: res.StatusCode, Header: res.Header, Raw: raw}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: response is not JSON: %v: %s", method, path, err, raw)
	}
	if out.Timestamp == nil {
		t.Fatalf("%s %s: envelope without timestamp: %s", method, path, raw)
	}
	if out.Success != (out.Error == nil) {
		t.Fatalf("%s %s: success=%v but error=%v: %s", method, path, out.Success, out.Error, raw)
	}
	return out
}

// call is do with the first key.
func (s *stack) call(t *testing.T, method, path string, body any) response {
	t.Helper()
	return s.do(t, testKey, method, path, body)
}

// ok asserts a success with status want and decodes data into v.
func (r response) ok(t *testing.T, want int, v any) {
	t.Helper()
	if r.Status != want || !r.Success {
		t.Fatalf("status %d, want %d success: %s", r.Status, want, r.Raw)
	}
	if v != nil {
		if err := json.Unmarshal(r.Data, v); err != nil {
			t.Fatalf("decode data: %v: %s", err, r.Data)
		}
	}
}

// fails asserts an error envelope with status and code.
func (r response) fails(t *testing.T, status int, code string) {
	t.Helper()
	if r.Status != status || r.Success || r.Error == nil || r.Error.Code != code {
		t.Fatalf("got %d %s, want %d with code %q", r.Status, r.Raw, status, code)
	}
	if r.Error.Message == "" {
		t.Fatalf("error without a message: %s", r.Raw)
	}
}

// snapshot is the whole store's content that the API may change, as text:
// comparing two snapshots shows whether a request changed anything.
func (s *stack) snapshot(t *testing.T) string {
	t.Helper()
	var out strings.Builder
	for _, q := range []string{
		`SELECT coalesce(json_agg(t ORDER BY id), '[]')::text FROM walhook.endpoints t`,
		`SELECT coalesce(json_agg(t ORDER BY id), '[]')::text FROM walhook.deliveries t`,
		`SELECT coalesce(json_agg(t ORDER BY id), '[]')::text FROM walhook.events t`,
		`SELECT count(*)::text FROM walhook.attempts`,
	} {
		var v string
		if err := s.pool.QueryRow(context.Background(), q).Scan(&v); err != nil {
			t.Fatal(err)
		}
		out.WriteString(v)
		out.WriteByte('\n')
	}
	return out.String()
}

func (s *stack) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (s *stack) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := s.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// created is the data of a create response.
type created struct {
	SubscriptionID string   `json:"subscriptionId"`
	URL            string   `json:"url"`
	Events         []string `json:"events"`
	Auctions       []string `json:"auctions"`
	Description    string   `json:"description"`
	Active         bool     `json:"active"`
	CreatedAt      int64    `json:"createdAt"`
	Secret         string   `json:"secret"`
}

// create makes a webhook through the API and returns its data.
func (s *stack) create(t *testing.T, url string, events ...string) created {
	t.Helper()
	if len(events) == 0 {
		events = []string{"auction.*"}
	}
	var c created
	s.call(t, "POST", "/api/v1/webhooks/create", map[string]any{"url": url, "events": events}).ok(t, http.StatusCreated, &c)
	return c
}

var eventSeq struct {
	sync.Mutex
	n int
}

// appendEvents makes events durable through the outbox, as the cdc stream
// would, and returns them.
func (s *stack) appendEvents(t *testing.T, typ, auction string, n int) []mapper.Event {
	t.Helper()
	evs := make([]mapper.Event, n)
	eventSeq.Lock()
	for i := range evs {
		eventSeq.n++
		evs[i] = mapper.Event{
			ID: fmt.Sprintf("ev-%d-%d", time.Now().UnixNano(), eventSeq.n), Type: typ, AuctionID: auction,
			Envelope: mapper.EnvelopeAuctionExcellence, OccurredAt: time.Now().UTC().Truncate(time.Millisecond),
			Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, eventSeq.n)), Table: "public.auctions", Position: i,
		}
	}
	lsn := cdc.LSN(1000 * eventSeq.n)
	eventSeq.Unlock()
	err := s.d.Append(context.Background(), "walhook", "sys", []dispatch.TxEvents{{
		Xid: 7, CommitLSN: lsn - 1, EndLSN: lsn, Final: true, CommitTime: time.Now(), Events: evs}})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// waitFor polls cond; the deadline only guards against a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// received is one request a receiver saw.
type received struct {
	Header http.Header
	Body   []byte
}

// receiver is a loopback webhook receiver answering with its current
// status code.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	reqs   []received
}

func newReceiver(t *testing.T) *receiver {
	rc := &receiver{status: http.StatusOK}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, received{Header: r.Header.Clone(), Body: body})
		code := rc.status
		rc.mu.Unlock()
		w.WriteHeader(code)
		io.WriteString(w, "receiver says hello")
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) setStatus(code int) {
	rc.mu.Lock()
	rc.status = code
	rc.mu.Unlock()
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

// ids returns the webhook-id of every request received, in order.
func (rc *receiver) ids() []string {
	var out []string
	for _, r := range rc.requests() {
		out = append(out, r.Header.Get("webhook-id"))
	}
	return out
}
