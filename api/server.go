package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/lograte"
)

// AdminStore is the store the API reads and changes. *dispatch.Admin
// implements it.
type AdminStore interface {
	CreateEndpoint(ctx context.Context, in dispatch.EndpointInput) (dispatch.Endpoint, error)
	ListEndpoints(ctx context.Context, o dispatch.ListOptions) ([]dispatch.Endpoint, string, int, error)
	GetEndpoint(ctx context.Context, id string) (dispatch.Endpoint, error)
	UpdateEndpoint(ctx context.Context, id string, p dispatch.EndpointPatch) (dispatch.Endpoint, error)
	DeleteEndpoint(ctx context.Context, id string) error
	ListDeliveries(ctx context.Context, endpointID string, f dispatch.DeliveryFilter) ([]dispatch.Delivery, string, error)
	GetDelivery(ctx context.Context, id string) (dispatch.Delivery, []dispatch.Attempt, error)
	Redeliver(ctx context.Context, id string) (dispatch.Delivery, error)
	Recover(ctx context.Context, endpointID string, since time.Time) (int, error)
	RotateSecret(ctx context.Context, endpointID string, overlap time.Duration) (string, time.Time, error)
	OutboxStatus(ctx context.Context) (dispatch.OutboxStatus, error)
	SendTest(ctx context.Context, endpointID string) (dispatch.TestResult, error)
}

// Replication reports the replication slot's state for /api/v1/status.
// cmd/walhook adapts the cdc stream to it. With an error, Status still
// returns what it knows (Slot, State, LastError); the slot row's values
// count as read only when WALStatus is set, and are shown as null
// otherwise.
type Replication interface {
	Status(ctx context.Context) (ReplicationStatus, error)
}

// ReplicationStatus is the slot as /api/v1/status shows it.
type ReplicationStatus struct {
	Slot          string  `json:"slot"`
	Active        bool    `json:"active"`        // a walsender streams from it
	WALStatus     string  `json:"walStatus"`     // pg_replication_slots.wal_status: reserved, extended, unreserved, lost
	ConfirmedLSN  string  `json:"confirmedLsn"`  // confirmed_flush_lsn
	RetainedBytes int64   `json:"retainedBytes"` // WAL kept for the slot: current LSN − restart_lsn
	LagBytes      int64   `json:"lagBytes"`      // current LSN − confirmed_flush_lsn
	LagSeconds    float64 `json:"lagSeconds"`    // since the last confirmation while something is unconfirmed
	// LagSecondsUnknown: this process does not stream and cannot tell
	// (the process that does knows); lagSeconds is shown as null.
	LagSecondsUnknown bool   `json:"-"`
	State             string `json:"state"` // e.g. streaming, connecting, stopped
	LastError         string `json:"lastError,omitempty"`
	// Warnings are problems of the rule tables found while running (e.g.
	// a new partition without REPLICA IDENTITY FULL), each with its fix:
	// nothing failed yet, but the first change that needs what is
	// missing will stop walhook.
	Warnings []string `json:"warnings,omitempty"`
}

// Key is one admin API key. Name identifies it in logs and rate limits; the
// key itself is never logged.
type Key struct {
	Name string
	Key  string
}

// CatalogEntry is one subscribable event type.
type CatalogEntry struct {
	Type        string `json:"type"`
	Description string `json:"description"`
}

// DefaultOpen are the paths served without a key.
var DefaultOpen = []string{"/healthz", "/readyz", "/metrics"}

// Options configure a Server. Admin and at least one key are required.
type Options struct {
	Keys []Key
	// Open lists paths served without a key; nil means DefaultOpen, an
	// empty non-nil slice protects every path.
	Open []string
	// WritePerMinute limits POST/PUT/DELETE per key (default 60),
	// ReadPerMinute GETs (default 100). Each allows a burst of its size.
	WritePerMinute int
	ReadPerMinute  int
	// Catalog is the mapping's event types; event filters are checked
	// against it.
	Catalog []CatalogEntry
	Admin   AdminStore
	// Replication is optional; /api/v1/status shows "slot": null without it.
	Replication Replication
	// Gatherer serves /metrics (nil: /metrics is 404); Registerer receives
	// the API's own metrics (nil: not registered).
	Gatherer   prometheus.Gatherer
	Registerer prometheus.Registerer
	// Ready is /readyz: nil when the store answers (nil func: always
	// ready). Its error is logged, never shown: it names hosts and users.
	Ready  func(ctx context.Context) error
	Logger *slog.Logger
	// Now is the clock of envelopes and rate limits (tests inject one).
	Now func() time.Time
	// SecretOverlap is how long a rotated secret keeps signing (default 24h).
	SecretOverlap time.Duration
	// MaxBody is the request body limit (default 1 MiB).
	MaxBody int64
	// ShutdownTimeout bounds the graceful shutdown (default
	// DefaultShutdownTimeout); give it at least the delivery timeout, which
	// a test send in flight can take.
	ShutdownTimeout time.Duration
	// StoreTimeout bounds a request's work on the store (default
	// DefaultStoreTimeout): a store that hangs, or a lock someone holds on
	// walhook's tables, answers 503 store_unavailable instead of holding
	// the request until the client gives up. Not for the test send (bound
	// by the delivery timeout), the status page (its own probes), nor a
	// delete or a recover (work in proportion to the history).
	StoreTimeout time.Duration
}

// DefaultStoreTimeout is Options.StoreTimeout's default.
const DefaultStoreTimeout = 15 * time.Second

// Server is the admin API. Handler serves it; Run and Serve listen.
type Server struct {
	admin       AdminStore
	replication Replication
	ready       func(ctx context.Context) error
	catalog     []CatalogEntry
	log         *slog.Logger
	now         func() time.Time
	overlap     time.Duration
	maxBody     int64
	shutdown    time.Duration
	storeWait   time.Duration
	open        map[string]bool
	keys        []keyEntry
	mux         *http.ServeMux
	metrics     *metrics
	handler     http.Handler
	notReady    *lograte.Limiter // /readyz's log lines
	// notReadyWhy is the problem /readyz last logged ("" while ready): a
	// different one is logged at once, not after the minute.
	notReadyMu  sync.Mutex
	notReadyWhy string
}

// New checks the options and builds the routes.
func New(o Options) (*Server, error) {
	if o.Admin == nil {
		return nil, errors.New("api: Options.Admin is required")
	}
	keys, err := newKeys(o.Keys, orDefault(o.WritePerMinute, 60), orDefault(o.ReadPerMinute, 100))
	if err != nil {
		return nil, err
	}
	s := &Server{
		admin: o.Admin, replication: o.Replication, ready: o.Ready,
		catalog: o.Catalog, log: o.Logger, now: o.Now, overlap: o.SecretOverlap,
		maxBody: o.MaxBody, shutdown: o.ShutdownTimeout, keys: keys, open: map[string]bool{},
		notReady: lograte.New(time.Minute),
	}
	if s.storeWait = o.StoreTimeout; s.storeWait <= 0 {
		s.storeWait = DefaultStoreTimeout
	}
	if s.shutdown <= 0 {
		s.shutdown = DefaultShutdownTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.overlap == 0 {
		s.overlap = 24 * time.Hour
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBody
	}
	open := o.Open
	if open == nil {
		open = DefaultOpen
	}
	for _, p := range open {
		s.open[p] = true
	}
	if s.metrics, err = newMetrics(o.Registerer); err != nil {
		return nil, err
	}
	s.routes(o.Gatherer)
	s.handler = http.HandlerFunc(s.serve)
	return s, nil
}

func orDefault(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// routes registers every route with a method pattern. Authentication, rate
// limits, 404/405 envelopes and metrics wrap the mux in serve.
func (s *Server) routes(g prometheus.Gatherer) {
	m := http.NewServeMux()
	m.HandleFunc("POST /api/v1/webhooks/create", s.createWebhook)
	m.HandleFunc("GET /api/v1/webhooks", s.listWebhooks)
	m.HandleFunc("GET /api/v1/webhooks/{id}", s.getWebhook)
	m.HandleFunc("PUT /api/v1/webhooks/{id}", s.updateWebhook)
	m.HandleFunc("DELETE /api/v1/webhooks/{id}", s.deleteWebhook)
	m.HandleFunc("POST /api/v1/webhooks/{id}/test", s.testWebhook)
	m.HandleFunc("GET /api/v1/webhooks/{id}/deliveries", s.listDeliveries)
	m.HandleFunc("POST /api/v1/webhooks/{id}/recover", s.recoverWebhook)
	m.HandleFunc("POST /api/v1/webhooks/{id}/rotate-secret", s.rotateSecret)
	m.HandleFunc("GET /api/v1/deliveries/{id}", s.getDelivery)
	m.HandleFunc("POST /api/v1/deliveries/{id}/redeliver", s.redeliver)
	m.HandleFunc("GET /api/v1/events", s.events)
	m.HandleFunc("GET /api/v1/status", s.status)
	m.HandleFunc("GET /healthz", s.healthz)
	m.HandleFunc("GET /readyz", s.readyz)
	if g != nil {
		m.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	s.mux = m
}

// Handler returns the API as an http.Handler, to mount or to test.
func (s *Server) Handler() http.Handler { return s.handler }

var probeMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch}

// route returns the matched pattern, or "" with the methods the path allows
// (for a 405) — probing the mux, so the JSON 405 stays in step with the
// registered routes.
//
// A path that is a literal route for other methods is that route, not an
// id: GET /api/v1/webhooks/create is a 405 (Allow: POST), not a lookup of
// the endpoint "create".
func (s *Server) route(r *http.Request) (pattern string, allow []string) {
	_, matched := s.mux.Handler(r)
	if matched != "" && !strings.Contains(matched, "{") {
		return matched, nil
	}
	var literal []string
	for _, m := range probeMethods {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" {
			allow = append(allow, m)
			if !strings.Contains(p, "{") {
				literal = append(literal, m)
			}
		}
	}
	switch {
	case len(literal) > 0:
		return "", literal
	case matched != "":
		return matched, nil
	}
	return "", allow
}

// serve is the request pipeline: route → authenticate → rate-limit → handle,
// with the outcome counted by route and code.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	pattern, allow := s.route(r)
	label := pattern
	if label == "" {
		label = "unmatched"
	}
	keyName := ""
	defer func() {
		s.metrics.observe(label, sw.status, time.Since(start))
		s.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "route", label,
			"status", sw.status, "key", keyName, "duration", time.Since(start))
	}()

	if !s.open[r.URL.Path] {
		k := s.authenticate(r.Header.Get("X-API-Key"))
		if k == nil {
			s.fail(sw, r, errorf(http.StatusUnauthorized, CodeUnauthorized, "missing or invalid X-API-Key header"))
			return
		}
		keyName = k.name
		if wait, ok := k.allow(r.Method, s.now()); !ok {
			sw.Header().Set("Retry-After", retryAfter(wait))
			s.fail(sw, r, errorf(http.StatusTooManyRequests, CodeRateLimited,
				"rate limit of key %q reached; retry in %s", k.name, retryAfter(wait)+"s"))
			return
		}
	}
	if pattern != "" && !queryRoutes[pattern] && strings.Contains(pattern, " /api/") {
		// The list routes check their own parameters; the others take
		// none, and one ignored would do nothing the caller asked for.
		if _, err := query(r); err != nil {
			s.fail(sw, r, err)
			return
		}
	}
	switch {
	case pattern != "" && !unboundedRoutes[pattern]:
		ctx, cancel := context.WithTimeout(r.Context(), s.storeWait)
		defer cancel()
		s.mux.ServeHTTP(sw, r.WithContext(ctx))
	case pattern != "":
		s.mux.ServeHTTP(sw, r)
	case len(allow) > 0:
		sw.Header().Set("Allow", joinMethods(allow))
		s.fail(sw, r, errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, joinMethods(allow)))
	default:
		s.fail(sw, r, errorf(http.StatusNotFound, CodeNotFound, "no route %s %s", r.Method, r.URL.Path))
	}
}

// queryRoutes are the API routes that take query parameters, which
// their handlers check (query); every other API route refuses any.
var queryRoutes = map[string]bool{
	"GET /api/v1/webhooks": true, "GET /api/v1/webhooks/{id}/deliveries": true,
}

// unboundedRoutes are served without Options.StoreTimeout: the test send
// waits for the receiver (the delivery timeout), the status page and the
// probes bound their own work, /metrics reads no store, a delete or a
// recover does work in proportion to the endpoint's history (a bound
// would roll back a large one every time), and a create or a secret
// rotation returns a secret shown only once (a bound that fired as its
// commit went out could leave a secret in force that nobody saw).
var unboundedRoutes = map[string]bool{
	"POST /api/v1/webhooks/{id}/test": true, "GET /api/v1/status": true,
	"GET /healthz": true, "GET /readyz": true, "GET /metrics": true,
	"DELETE /api/v1/webhooks/{id}": true, "POST /api/v1/webhooks/{id}/recover": true,
	"POST /api/v1/webhooks/create": true, "POST /api/v1/webhooks/{id}/rotate-secret": true,
}

func joinMethods(ms []string) string {
	out := ""
	for i, m := range ms {
		if i > 0 {
			out += ", "
		}
		out += m
	}
	return out
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Run listens on addr and serves until ctx is cancelled, then shuts down
// gracefully. It returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("api: listen on %s: %w", addr, err)
	}
	return s.Serve(ctx, ln)
}

// DefaultShutdownTimeout bounds the graceful shutdown when
// Options.ShutdownTimeout is not set: requests in flight (a test send can
// take the delivery timeout, 30 s by default) get this long to finish.
const DefaultShutdownTimeout = 35 * time.Second

// Serve serves on ln until ctx is cancelled, then stops accepting, lets
// requests in flight finish (at most Options.ShutdownTimeout) and returns
// nil. Requests still running then are cut off and logged: the process
// stops as it was asked to, and a test send cut off this way ends failed
// by the lease rescue.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("api listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("api: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		s.log.Warn("api: requests still running at the end of the shutdown timeout were cut off",
			slog.Duration("timeout", s.shutdown), slog.Any("error", err))
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api: serve: %w", err)
	}
	return nil
}
