package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/mapper"
)

// This file converts the config into the options of cdc, dispatch and api
// for `walhook run` (the working packages never import config).

// newLogger builds the slog logger of config.Log on w (stderr).
func newLogger(c config.Log, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, usageErrorf("log.level: %q is not one of debug, info, warn, error", c.Level)
	}
	o := &slog.HandlerOptions{Level: level}
	switch c.Format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, o)), nil
	}
	return nil, usageErrorf("log.format: %q is not text or json", c.Format)
}

// describeDSN names a database for logs and errors without its password,
// as walhook check does (dsnLabel); run refuses an unparsable DSN before.
func describeDSN(dsn string) string {
	l, err := dsnLabel(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return l
}

// redactDSNError removes the connection string (which may hold a password)
// that pgconn puts into its parse errors.
func redactDSNError(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		pe.ConnString = "(redacted)"
	}
	return err
}

// dsnSetsPoolSize reports whether the DSN chooses the pool size itself.
func dsnSetsPoolSize(dsn string) bool { return strings.Contains(dsn, "pool_max_conns") }

func streamOptions(cfg *config.Config, log *slog.Logger) cdc.Options {
	return cdc.Options{
		DSN:               cfg.Source.DSN,
		Slot:              cfg.Source.Slot,
		Publication:       cfg.Source.Publication,
		HeartbeatInterval: cfg.Source.HeartbeatInterval.D(),
		StatusInterval:    cfg.Source.StatusInterval.D(),
		MaxChunkChanges:   cfg.Source.MaxChunkChanges,
		// Transactions that wait while an Append commits are stored by the
		// next Append together; a deep channel lets a backlog of small
		// transactions form batches of hundreds (one store commit each)
		// instead of 64. Memory stays bounded by MaxBufferedChanges.
		TxBuffer: 1024,
		Logger:   log.With("part", "cdc"),
	}
}

// userAgent is delivery.user_agent, default "walhook/<version>".
func userAgent(cfg *config.Config) string {
	if cfg.Delivery.UserAgent != "" {
		return cfg.Delivery.UserAgent
	}
	return "walhook/" + Version
}

func dispatchOptions(cfg *config.Config, log *slog.Logger, reg prometheus.Registerer) dispatch.Options {
	dl := cfg.Delivery
	sched := make([]time.Duration, len(dl.RetrySchedule))
	for i, d := range dl.RetrySchedule {
		sched[i] = d.D()
	}
	return dispatch.Options{
		Schema:     cfg.Store.Schema,
		Logger:     log.With("part", "dispatch"),
		Registerer: reg,
		// Counted by outcome only when the config turns the endpoint
		// label off (thousands of endpoints).
		NoEndpointMetrics: !cfg.Delivery.EndpointMetrics,
		Client: dispatch.ClientOptions{
			Timeout:         dl.Timeout.D(),
			AllowHTTP:       dl.AllowHTTP,
			Allow:           dl.Allow,
			MaxResponseBody: dl.MaxResponseBody,
			UserAgent:       userAgent(cfg),
		},
		Retry: dispatch.RetryPolicy{
			Schedule:      sched,
			Jitter:        dl.Jitter,
			RetryAfterCap: dl.RetryAfterCap.D(),
		},
		Workers:                dl.Workers,
		MaxInFlightPerEndpoint: dl.MaxInFlightPerEndpoint,
		BatchSize:              dl.BatchSize,
		Lease:                  dl.Lease.D(),
		PollInterval:           dl.PollInterval.D(),
		Retention:              dl.Retention.D(),
		DisableWindow:          dl.Disable.Window.D(),
		DisableMinFailed:       dl.Disable.MinFailedDeliveries,
		DisableNever:           dl.Disable.Never,
		SecretOverlap:          dl.SecretOverlap.D(),
		Envelope:               mapper.Envelope(cfg.Mapping.Envelope),
	}
}

func staticEndpoints(cfg *config.Config) []dispatch.StaticEndpoint {
	out := make([]dispatch.StaticEndpoint, 0, len(cfg.Endpoints))
	for _, e := range cfg.Endpoints {
		out = append(out, dispatch.StaticEndpoint{
			Name: e.ID, URL: e.URL, Secret: e.Secret, Description: e.Description,
			Events: e.Events, Auctions: e.Auctions, Disabled: e.Disabled,
		})
	}
	return out
}

func apiOptions(cfg *config.Config, admin api.AdminStore, repl api.Replication, reg *prometheus.Registry,
	pool *pgxpool.Pool, log *slog.Logger) api.Options {
	keys := make([]api.Key, 0, len(cfg.API.Keys))
	for _, k := range cfg.API.Keys {
		keys = append(keys, api.Key{Name: k.Name, Key: k.Key})
	}
	entries := catalogEntries(cfg)
	open := cfg.API.Open
	if open == nil {
		open = []string{}
	}
	return api.Options{
		Keys:           keys,
		Open:           open,
		WritePerMinute: cfg.API.RateLimits.WritePerMinute,
		ReadPerMinute:  cfg.API.RateLimits.ReadPerMinute,
		Catalog:        entries,
		Admin:          admin,
		Replication:    repl,
		Gatherer:       reg,
		Registerer:     reg,
		Ready:          func(ctx context.Context) error { return storeWritable(ctx, pool) },
		Logger:         log.With("part", "api"),
		SecretOverlap:  cfg.Delivery.SecretOverlap.D(),
		// A test send in flight may take the whole delivery timeout.
		ShutdownTimeout: max(api.DefaultShutdownTimeout, cfg.Delivery.Timeout.D()+5*time.Second),
	}
}

// replicationStatus adapts the cdc stream to api.Replication. The stream
// changes with each leadership term (a new cdc.Stream each time this
// process takes the slot); while another process holds the slot the
// standby stream, which never runs, still reads the slot's row.
type replicationStatus struct {
	standby  *cdc.Stream
	current  atomic.Pointer[cdc.Stream]
	warnings atomic.Pointer[[]string] // the leader's watchRuleTables
	// Without a current stream: why (acquireLeader's stateStandby or
	// stateWaitingForStore), and the stream of this process's last term.
	waiting atomic.Pointer[string]
	prev    atomic.Pointer[cdc.Stream]
	// reconnects of the terms that ended, each counting its own end: the
	// counter on /metrics is the process's, not one stream's. endTerm
	// moves a stream's count into it and clears current under mu, so that
	// a read (reconnectCount) never counts an ending term twice, which
	// would make the counter go back on the next scrape (a reset to
	// Prometheus).
	mu         sync.Mutex
	reconnects int64
}

// endTerm records the end of a term that streamed with s.
func (r *replicationStatus) endTerm(s *cdc.Stream) {
	r.mu.Lock()
	r.reconnects += s.Reconnects() + 1
	r.current.Store(nil)
	r.mu.Unlock()
	r.prev.Store(s)
	s.CloseStatus() // status reads go to the standby stream now
}

// reconnectCount is the process's replication reconnects: the ended
// terms' and the current stream's.
func (r *replicationStatus) reconnectCount() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.reconnects
	if s := r.current.Load(); s != nil {
		n += s.Reconnects()
	}
	return n
}

// setWaiting records why this process does not stream now.
func (r *replicationStatus) setWaiting(state string) { r.waiting.Store(&state) }

func (r *replicationStatus) setWarnings(w []string) {
	if len(w) == 0 {
		r.warnings.Store(nil)
		return
	}
	r.warnings.Store(&w)
}

var _ api.Replication = (*replicationStatus)(nil)

// stateStandby is shown while another walhook process holds the slot;
// stateWaitingForStore while this one cannot reach the store to take the
// leader lock (nobody streams then, unless a process elsewhere still
// reaches the store).
const (
	stateStandby         = "standby"
	stateWaitingForStore = "waiting_for_store"
)

// slot reads the slot as this process sees it: through its current
// stream while it leads; otherwise through the standby stream, with State
// saying why it does not stream and lagUnknown set where the lag in
// seconds is the leader's to know. Only while this process cannot reach
// the store, and the slot is still where its last term left it, is the
// lag known here: counted from that term's last confirmation.
func (r *replicationStatus) slot(ctx context.Context) (st cdc.SlotStatus, leader, lagUnknown bool, err error) {
	defer func() { st.Reconnects = r.reconnectCount() }()
	if s := r.current.Load(); s != nil {
		st, err = s.Status(ctx)
		return st, true, false, err
	}
	st, err = r.standby.Status(ctx)
	st.State = stateStandby
	if w := r.waiting.Load(); w != nil {
		st.State = *w
	}
	st.LagSeconds, lagUnknown = 0, st.LagBytes > 0
	// Valid while the slot is where this process left it: a process
	// elsewhere that reaches the store and leads moves it on.
	if prev := r.prev.Load(); st.State == stateWaitingForStore && prev != nil && st.LagBytes > 0 &&
		st.ConfirmedFlushLSN <= prev.Confirmed() {
		if at := prev.UpToDateAt(); !at.IsZero() {
			st.LagSeconds, lagUnknown = time.Since(at).Seconds(), false
		}
	}
	return st, false, lagUnknown, err
}

func (r *replicationStatus) Status(ctx context.Context) (api.ReplicationStatus, error) {
	st, _, lagUnknown, err := r.slot(ctx)
	out := api.ReplicationStatus{
		Slot: st.Slot, Active: st.Active, WALStatus: st.WALStatus, ConfirmedLSN: st.ConfirmedFlushLSN.String(),
		RetainedBytes: st.RetainedBytes, LagBytes: st.LagBytes, LagSeconds: st.LagSeconds, LagSecondsUnknown: lagUnknown,
		State: st.State, LastError: st.LastError,
	}
	if w := r.warnings.Load(); w != nil {
		out.Warnings = *w
	}
	return out, err
}

// catalogEntries is the mapping's event types as the API lists them.
func catalogEntries(cfg *config.Config) []api.CatalogEntry {
	catalog := cfg.Catalog()
	entries := make([]api.CatalogEntry, 0, len(catalog))
	for _, c := range catalog {
		entries = append(entries, api.CatalogEntry{Type: c.Type, Description: c.Description})
	}
	return entries
}

// warnStaleSubscriptions logs each endpoint with an event filter that
// selects nothing the rules produce: the API checks filters when they are
// written, but a rule renamed or removed since leaves the endpoint
// subscribed to a type that never comes, and it would receive nothing of
// it without a word. A store error is logged, not fatal: this is advice.
func warnStaleSubscriptions(ctx context.Context, admin *dispatch.Admin, catalog []api.CatalogEntry, log *slog.Logger) {
	cursor := ""
	for {
		eps, next, _, err := admin.ListEndpoints(ctx, dispatch.ListOptions{Limit: 100, Cursor: cursor})
		if err != nil {
			log.Warn("look for subscriptions to event types no rule produces", logKeyErr, err)
			return
		}
		for _, ep := range eps {
			var stale []string
			for _, f := range ep.Events {
				if !api.FilterKnown(catalog, f) {
					stale = append(stale, f)
				}
			}
			if len(stale) > 0 {
				log.Warn("an endpoint subscribes to event types no rule produces (renamed or removed from the rules?): it receives none of them; "+
					"change its events (PUT /api/v1/webhooks/{id}, or the config for a static one) or the rules",
					slog.String("endpoint", ep.ID), slog.Any("events", stale))
			}
		}
		if next == "" {
			return
		}
		cursor = next
	}
}

// slotCollector exports the slot's retained WAL, lag and the stream's
// reconnects on /metrics, read at scrape time.
type slotCollector struct {
	repl                           *replicationStatus
	retained, lagBytes, lagSeconds *prometheus.Desc
	reconnects, leader             *prometheus.Desc
}

func newSlotCollector(r *replicationStatus) *slotCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("walhook_slot_"+name, help, nil, nil)
	}
	return &slotCollector{
		repl:       r,
		retained:   d("retained_wal_bytes", "WAL PostgreSQL keeps for the slot (current LSN - restart_lsn)."),
		lagBytes:   d("lag_bytes", "Current WAL LSN - the slot's confirmed_flush_lsn."),
		lagSeconds: d("lag_seconds", "While WAL is unconfirmed, the time since walhook was last up to date with the slot (its last confirmation, or the last keepalive that found nothing unconfirmed)."),
		reconnects: d("reconnects_total", "Replication reconnects of this process, a new term as leader included."),
		leader:     d("leader", "1 while this process holds the leader lock: it streams from the slot, or waits for the previous holder to let it go."),
	}
}

func (c *slotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.retained, c.lagBytes, c.lagSeconds, c.reconnects, c.leader} {
		ch <- d
	}
}

func (c *slotCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, leader, lagUnknown, err := c.repl.slot(ctx)
	l := 0.0
	if leader {
		l = 1
	}
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, l)
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(st.Reconnects))
	if err != nil && st.WALStatus == "" {
		// The slot's row is unknown; the gauges are left out rather than
		// zero. A lost slot's row is read (with its error), and its
		// retained WAL and lag are worth graphing then.
		return
	}
	ch <- prometheus.MustNewConstMetric(c.retained, prometheus.GaugeValue, float64(st.RetainedBytes))
	ch <- prometheus.MustNewConstMetric(c.lagBytes, prometheus.GaugeValue, float64(st.LagBytes))
	if !lagUnknown {
		ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, st.LagSeconds)
	}
}

// storeReadOnlyFix is what to do about a read-only store.
const storeReadOnlyFix = "point store.dsn at the primary (with several hosts in it, add target_session_attrs=read-write), " +
	"or turn default_transaction_read_only off for walhook's role or database"

// storeReadOnlyFixFor is storeReadOnlyFix for cfg: with the store in the
// source database (store.dsn not set), a role the DBA made read-only
// there on purpose (walhook only reads the source) needs a store
// elsewhere, which the fix names first.
func storeReadOnlyFixFor(cfg *config.Config) string {
	if cfg.Store.DSN == cfg.Source.DSN {
		return "the store is the source database (store.dsn is source.dsn), which is read-only for this role: set store.dsn to a " +
			"database walhook may write (walhook only reads the source), or " + storeReadOnlyFix
	}
	return storeReadOnlyFix
}

// storeWritable is /readyz's check: the store answers and takes writes.
// One that answers read-only (a standby the store DSN reaches after a
// failover, default_transaction_read_only) can neither store events nor
// record a delivery, so a ping alone would call it ready.
func storeWritable(ctx context.Context, pool *pgxpool.Pool) error {
	var ro string
	if err := pool.QueryRow(ctx, "SHOW transaction_read_only").Scan(&ro); err != nil {
		return err
	}
	if ro != "off" {
		return errStoreReadOnly
	}
	return nil
}

// errStoreReadOnly is storeWritable's store that answers read-only.
var errStoreReadOnly = errors.New("the store is read-only (a standby, or default_transaction_read_only is on): walhook can neither store events nor record deliveries")

// readOnlyFix is " — fix: …" (storeReadOnlyFix) for a read-only store,
// and nothing for storeWritable's other errors (the store did not answer):
// pointing at the primary would be the wrong fix for those.
func readOnlyFix(cfg *config.Config, err error) string {
	if errors.Is(err, errStoreReadOnly) {
		return " — fix: " + storeReadOnlyFixFor(cfg)
	}
	return ""
}
