package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/cpuyield"
	"github.com/walhook/walhook/mapper"
)

// Log attribute keys of the run command.
const (
	logKeyErr     = "error"
	logKeySlot    = "slot"
	logKeyLSN     = "lsn"
	logKeyAddr    = "addr"
	logKeyEvents  = "events"
	logKeyTxs     = "txs"
	logKeyAttempt = "attempt"
	logKeyRetryIn = "retry_in"
)

// runRun is `walhook run`: the daemon. It checks the store and the mapping
// against the live databases, then runs three parts until ctx is cancelled
// (SIGINT/SIGTERM) or one of them fails:
//
//   - replication (only while this process holds the slot's leader lock):
//     cdc stream → mapper → dispatch.Append → stream.Confirm;
//   - delivery: the dispatcher's workers;
//   - the admin/status API.
//
// A cancelled ctx is a graceful stop and returns nil: the consumer finishes
// the batch it is appending and confirms it, workers finish the attempts in
// flight, the API drains. Any part failing stops the others and Run returns
// its error (exit 1).
func runRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	cfgPath := configFlag(fs)
	dryRun := fs.Bool("dry-run", false, "print the events the live stream maps to as JSON lines; store, deliver and confirm nothing")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if err := checkDSNs(cfg); err != nil {
		return err
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	if *dryRun {
		err := runDryRun(ctx, cfg, log, stdout, stderr)
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	r := &runner{cfg: cfg, log: log, stdout: stdout}
	err = r.run(ctx)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil // stopped while starting: as clean as a stop while running
	}
	return err
}

// runner holds what the parts of `walhook run` share.
type runner struct {
	cfg    *config.Config
	log    *slog.Logger
	stdout io.Writer

	pool     *pgxpool.Pool
	disp     *dispatch.Dispatcher
	mapper   *mapper.Mapper
	systemID string
	reg      *prometheus.Registry
	repl     *replicationStatus

	// lastCommit is the commit time (Unix ns) of the transaction the
	// consumer read last, 0 while this process does not hold the slot.
	lastCommit atomic.Int64
	yielding   prometheus.Gauge
	// deferred is open while cpu.yield defers new changes: the consumer
	// waits for it to close before it takes the next transaction.
	deferred      atomic.Pointer[chan struct{}]
	deferredGauge prometheus.Gauge
	ruleProblems  prometheus.Gauge // watchRuleTables' count
}

// deferIntake pauses (true) or resumes (false) the consumer's intake of
// new transactions. Safe from any goroutine.
func (r *runner) deferIntake(on bool) {
	if on {
		ch := make(chan struct{})
		if r.deferred.CompareAndSwap(nil, &ch) {
			r.deferredGauge.Set(1)
		}
		return
	}
	if ch := r.deferred.Swap(nil); ch != nil {
		close(*ch)
		r.deferredGauge.Set(0)
	}
}

// intakeOpen waits while the intake is deferred; false when ctx ended first.
func (r *runner) intakeOpen(ctx context.Context) bool {
	ch := r.deferred.Load()
	if ch == nil {
		return true
	}
	select {
	case <-ctx.Done():
		return false
	case <-*ch:
		return true
	}
}

// lag is how far behind the source this process reads, by commit time: 0
// when it does not hold the slot. While the slot is caught up, keepalives
// and heartbeats carry the server's time, so lag stays near 0.
func (r *runner) lag() time.Duration {
	ns := r.lastCommit.Load()
	if ns == 0 {
		return 0
	}
	return max(time.Since(time.Unix(0, ns)), 0)
}

// refuseStaleCursor refuses a store whose cursor the slot has passed (a
// copy of a store that moved elsewhere and went on there, a restore) or
// that was written while reading another system, before its dispatcher
// sends anything: the deliveries pending in a stale copy went out from
// the store that moved on. The leader's term refuses them too, but only
// once the dispatcher runs. A fork is left to the term, which records it.
func (r *runner) refuseStaleCursor(ctx context.Context) error {
	gap, err := readCursorGap(ctx, r.cfg)
	if err != nil || gap == nil || (gap.otherSystem == "" && gap.walEnd != 0) {
		return nil // a source that does not answer is waited for; no gap; a fork
	}
	if gap.otherSystem != "" {
		return fmt.Errorf("%s — fix: %s", gap, otherSystemFix)
	}
	return fmt.Errorf("%w: %s; to accept the gap, run walhook setup --accept-gap (it moves the cursor to %s; "+
		"for a copy of a store that moved elsewhere, drop this copy instead)", cdc.ErrCursorBehindSlot, gap, gap.slot)
}

func (r *runner) run(ctx context.Context) error {
	// A config that run refuses is refused before prepare writes anything
	// to the store (static endpoints).
	if err := refusedByRun(r.cfg); err != nil {
		return err
	}
	if err := r.prepare(ctx); err != nil {
		return err
	}
	if err := r.refuseStaleCursor(ctx); err != nil {
		return err
	}
	// Closing connections to a server that does not answer (a frozen
	// host) waits for pgx's cancel requests, 15 s each: at exit nothing
	// needs them closed in order, so the stop does not wait for them.
	defer closeWithin(r.log, "the store's connections", exitCloseWait, r.pool.Close)
	defer closeWithin(r.log, "the source's status connection", exitCloseWait, r.repl.standby.CloseStatus)

	var srv *api.Server
	var ln net.Listener
	apiAddr := "off"
	if r.cfg.API.Listen != "" {
		var err error
		admin := dispatch.NewAdmin(r.pool, r.cfg.Store.Schema, r.disp)
		defer admin.Close() // before the pool closes
		if srv, err = api.New(apiOptions(r.cfg, admin, r.repl, r.reg, r.pool, r.log)); err != nil {
			return &UsageError{Err: fmt.Errorf("%s: %w", r.cfg.File, err)}
		}
		var lc net.ListenConfig
		if ln, err = lc.Listen(ctx, "tcp", r.cfg.API.Listen); err != nil {
			return fmt.Errorf("api: listen on %s: %w", r.cfg.API.Listen, err)
		}
		apiAddr = "http://" + ln.Addr().String()
	}
	fmt.Fprintf(r.stdout, "walhook %s running: source %s, slot %s, publication %s, store schema %s, api %s\n",
		Version, describeDSN(r.cfg.Source.DSN), r.cfg.Source.Slot, r.cfg.Source.Publication, r.cfg.Store.Schema, apiAddr)
	r.log.Info("walhook started", slog.String("version", Version), slog.String(logKeySlot, r.cfg.Source.Slot),
		slog.String("publication", r.cfg.Source.Publication), slog.String("store_schema", r.cfg.Store.Schema),
		slog.String(logKeyAddr, apiAddr), slog.String("system_id", r.systemID))
	if msg := exposedSecrets(r.cfg); msg != "" {
		r.log.Warn("the config file shows secrets to other users", slog.String("problem", msg), slog.String("fix", exposedSecretsFix(r.cfg)))
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.replicate(gctx) })
	g.Go(func() error { return r.disp.Run(gctx) })
	if srv != nil {
		g.Go(func() error { return srv.Serve(gctx, ln) })
	}
	if r.cfg.CPU.Yield && ownsProcess {
		g.Go(func() error {
			return cpuyield.Run(gctx, cpuyield.Options{MaxLag: r.cfg.CPU.MaxLag.D(), Lag: r.lag, Log: r.log,
				Yielding: func(y bool) { r.yielding.Set(b2f(y)) }, Defer: r.deferIntake})
		})
	}
	err := g.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		r.log.Error("walhook stopped", logKeyErr, err)
		return err
	}
	r.log.Info("walhook stopped")
	return nil
}

// exitCloseWait is how long the end of `walhook run` waits for its
// database connections to close.
const exitCloseWait = 2 * time.Second

// closeWithin runs closeFn and waits at most d for it: a connection to a
// server that froze closes only when pgx's own timeouts end. What is left
// closes in the background (the process is exiting).
func closeWithin(log *slog.Logger, what string, d time.Duration, closeFn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		closeFn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		log.Warn("stopping without waiting for "+what+" to close (the server does not answer)", slog.Duration("waited", d))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// prepare opens the store and checks everything that must hold before any
// part starts: store schema version, static endpoints, the mapping against
// the live source schema.
func (r *runner) prepare(ctx context.Context) error {
	cfg := r.cfg
	pool, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	r.pool = pool
	ok := false
	defer func() {
		if !ok {
			pool.Close()
		}
	}()
	// Both before anything is written: static endpoints go to the store
	// next, and a read-only store would fail there as a config error.
	if err := storeWritable(ctx, pool); err != nil {
		return fmt.Errorf("store %s: %w%s", describeDSN(cfg.Store.DSN), err, readOnlyFix(cfg, err))
	}
	if err := refuseSourceStandby(ctx, cfg.Source.DSN); err != nil {
		return err
	}
	if err := dispatch.CheckSchema(ctx, pool, cfg.Store.Schema); err != nil {
		if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
			return fmt.Errorf("store %s: %w — fix: walhook check prints the GRANTs the schema's owner runs", describeDSN(cfg.Store.DSN), err)
		}
		return fmt.Errorf("store %s: %w", describeDSN(cfg.Store.DSN), err)
	}
	// Before the static endpoints are written: another config's would go.
	if err := dispatch.RefuseSharedStore(ctx, pool, cfg.Store.Schema, cfg.Source.Slot); err != nil {
		return fmt.Errorf("store %s: %w", describeDSN(cfg.Store.DSN), err)
	}
	if moved, err := dispatch.CatchUpSequences(ctx, pool, cfg.Store.Schema); err != nil {
		r.log.Error("the store's sequences may be behind its rows (a store copied by logical replication), "+
			"and the delivery log records no attempt until they pass them — fix: walhook setup, as the store schema's owner",
			slog.String(logKeyErr, err.Error()))
	} else if len(moved) > 0 {
		r.log.Info("the store's sequences were behind its rows (a store copied by logical replication); moved them",
			slog.String("moved", strings.Join(moved, ", ")))
	}
	r.reg = prometheus.NewRegistry()
	r.yielding = prometheus.NewGauge(prometheus.GaugeOpts{Name: "walhook_cpu_yielding",
		Help: "1 while walhook's threads run at idle CPU priority (cpu.yield), else 0."})
	r.deferredGauge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "walhook_intake_deferred",
		Help: "1 while cpu.yield defers new changes from the source because the CPUs stay busy with other processes, else 0."})
	r.ruleProblems = prometheus.NewGauge(prometheus.GaugeOpts{Name: "walhook_rule_table_problems",
		Help: "Rule tables' problems the leader found while running (e.g. a new partition without REPLICA IDENTITY FULL): walhook stops at the first change that needs what is missing; /api/v1/status lists them."})
	r.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
		r.yielding, r.deferredGauge, r.ruleProblems)
	if r.disp, err = dispatch.New(pool, dispatchOptions(cfg, r.log, r.reg)); err != nil {
		return err
	}
	if r.systemID, err = cdc.SystemID(ctx, cfg.Source.DSN); err != nil {
		return fmt.Errorf("source %s: %w", describeDSN(cfg.Source.DSN), err)
	}
	if r.mapper, err = compileMapper(cfg, r.systemID, r.log); err != nil {
		return err
	}
	if err := checkLiveSchema(ctx, cfg.Source.DSN, cfg.Source.Publication, ruleOperations(cfg), r.mapper, r.log); err != nil {
		return err
	}
	// The first write to the store, after every refusal above: a config
	// run refuses changes nothing.
	if err := r.disp.SyncStaticEndpoints(ctx, staticEndpoints(cfg)); err != nil {
		// The endpoints passed the file check and refusedByRun (ids,
		// secrets, the delivery policy): what fails here is the store.
		return fmt.Errorf("store %s: %w", describeDSN(cfg.Store.DSN), err)
	}
	warnStaleSubscriptions(ctx, dispatch.NewAdmin(pool, cfg.Store.Schema, r.disp), catalogEntries(cfg), r.log)
	m := r.mapper
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "walhook_events_skipped_unavailable_total",
		Help: "Events not produced because a value they need was a large (TOASTed) value an UPDATE left unchanged, " +
			"which PostgreSQL sends only with REPLICA IDENTITY FULL (each one is logged with table, key and column)."},
		func() float64 { return float64(m.Stats().SkippedUnavailable) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "walhook_rule_when_unknown_total",
			Help: "Rule evaluations whose when: failed on a NULL value and so did not match (SQL's unknown)."},
			func() float64 { return float64(m.Stats().WhenUnknown) }))
	standby, err := cdc.NewStream(streamOptions(cfg, r.log))
	if err != nil {
		return &UsageError{Err: err}
	}
	r.repl = &replicationStatus{standby: standby}
	if err := r.reg.Register(newSlotCollector(r.repl)); err != nil {
		return err
	}
	ok = true
	return nil
}

// refuseSourceStandby refuses a source DSN that reaches a standby, where
// the slot is never found and "run walhook setup" would be the wrong fix.
func refuseSourceStandby(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("source %s: connect: %w", describeDSN(dsn), redactDSNError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := cdc.RefuseStandby(ctx, conn); err != nil {
		return fmt.Errorf("source %s: %w", describeDSN(dsn), err)
	}
	return nil
}

// storePingTimeout bounds the store pool's check of an idle connection.
// storeIdleTime is how long the pool keeps a connection nothing uses (its
// health check, every minute, closes older ones): well inside the idle
// timeouts of NATs and load balancers (4 min on Azure, 350 s on an AWS NAT
// gateway), which forget a connection without a word, so that a pool
// connection is closed before it is forgotten (pgx's default is 30 min;
// TestStorePoolIdleTimeInsideMiddleboxTimeouts). walhook's other store
// sessions are never idle that long: the leader lock is checked every
// second, the LISTEN connection after 20 s of quiet.
const (
	storePingTimeout = 5 * time.Second
	storeIdleTime    = 2 * time.Minute
)

// openStore connects the store pool, sized for the workers unless the DSN
// says pool_max_conns itself.
func openStore(ctx context.Context, cfg *config.Config) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(cfg.Store.DSN)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("store.dsn: %w", redactDSNError(err))}
	}
	if !dsnSetsPoolSize(cfg.Store.DSN) {
		// Workers record outcomes concurrently; claim, LISTEN, maintenance,
		// Append and the API need a few more.
		pc.MaxConns = int32(max(8, cfg.Delivery.Workers/2+6))
	}
	if !strings.Contains(cfg.Store.DSN, "pool_ping_timeout") {
		// The pool pings a connection idle for over a second before it
		// hands it out, by default without a bound: one the network
		// dropped without a word (a NAT that forgot it) held whoever
		// asked for it, the leader lock's next try included, for as long
		// as TCP takes (TestRunStoreBlackholedWhileClaiming).
		pc.PingTimeout = storePingTimeout
	}
	if !strings.Contains(cfg.Store.DSN, "pool_max_conn_idle_time") {
		pc.MaxConnIdleTime = storeIdleTime
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", describeDSN(cfg.Store.DSN), err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store %s: connect: %w", describeDSN(cfg.Store.DSN), err)
	}
	return pool, nil
}

// checkLiveSchema checks every rule against the source tables as they are
// now (columns exist, old values are sent where a rule reads them), so a
// mapping that cannot work is refused at startup with the fix, not at the
// first matching change. What works but may not be meant
// (mapper.UnsentDefaults) is logged as a warning.
func checkLiveSchema(ctx context.Context, dsn, publication string, ops []string, m *mapper.Mapper, log *slog.Logger) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("source %s: connect: %w", describeDSN(dsn), redactDSNError(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tables, parts, err := readSourceSchema(ctx, conn, m.Tables())
	if err != nil {
		return err
	}
	pubErr := checkPublicationFits(ctx, conn, publication, m.Tables(), ops)
	unlogged, err := readUnlogged(ctx, conn, m.Tables())
	if err != nil {
		return err
	}
	if lines := unloggedLines(m.Tables(), unlogged); len(lines) > 0 {
		unloggedErr := errors.New("tables the rules map write no WAL, so none of their changes would arrive:\n" + strings.Join(lines, "\n"))
		pubErr = errors.Join(unloggedErr, pubErr)
	}
	if err := m.CheckSchema(tables); err != nil {
		// The mapper's fix names the partitioned table only; its
		// partitions need FULL too.
		var more strings.Builder
		for _, t := range m.Tables() {
			if p := parts[t]; p != nil && len(p.notFull) > 0 && errors.Is(err, mapper.ErrNeedsOldValues) {
				fmt.Fprintf(&more, "\n%s is partitioned%s — fix: %s", t, partitionNote(p), identityFix(t, parts))
			}
		}
		// The publication's problems too, so one try names them all.
		if pubErr != nil {
			fmt.Fprintf(&more, "\n%v", pubErr)
		}
		return &UsageError{Err: fmt.Errorf("the mapping does not fit the source database:\n%w%s", err, more.String())}
	}
	for _, w := range m.UnsentDefaults(tables) {
		log.Warn(w)
	}
	return pubErr
}

// checkPublicationFits refuses a publication that would keep changes from
// the rules, silently: a rule table it does not publish (dropped and
// created again, which takes it out of the publication) streams nothing;
// a partitioned one without publish_via_partition_root streams under its
// partitions' names, which no rule names; a row filter turns updates
// across it into inserts and deletes, and a column list withholds
// columns. A missing publication is the stream's to report.
func checkPublicationFits(ctx context.Context, conn *pgx.Conn, publication string, tables, ops []string) error {
	missing, unusable, err := publicationFit(ctx, conn, publication, tables, ops)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		unusable = append([]string{fmt.Sprintf("publication %s does not publish %s, which the rules map (was it dropped and created again, or renamed?), "+
			"so no change of it would arrive; run walhook setup", publication, strings.Join(missing, ", "))}, unusable...)
	} else if len(unusable) > 0 {
		unusable = append([]string{"the publication does not send the rule tables' changes as the rules need them:"}, unusable...)
	}
	if len(unusable) > 0 {
		return errors.New(strings.Join(unusable, "\n"))
	}
	return nil
}

// publicationFit returns the rule tables the publication does not publish
// at all, and a line with its fix for each other way it keeps a rule
// table's changes from the rules (see checkPublicationFits); nothing when
// the publication does not exist.
func publicationFit(ctx context.Context, conn *pgx.Conn, publication string, tables, ops []string) (missing, unusable []string, err error) {
	facts, err := readPublication(ctx, conn, publication, tables)
	if err != nil {
		return nil, nil, fmt.Errorf("source: %w", err)
	}
	if !facts.exists {
		return nil, nil, nil
	}
	for _, p := range facts.problems(tables) {
		if p.missing {
			missing = append(missing, p.table)
		} else {
			unusable = append(unusable, fmt.Sprintf("  publication %s %s — fix: %s", publication, p.msg, p.fix))
		}
	}
	if ops := facts.unpublished(ops); len(ops) > 0 {
		unusable = append(unusable, fmt.Sprintf("  publication %s does not publish %s, which the rules map — fix: %s",
			publication, strings.Join(ops, ", "), facts.publishFix()))
	}
	return missing, unusable, nil
}

// ruleOperations lists the operations the rules map (insert, update,
// delete), sorted.
func ruleOperations(cfg *config.Config) []string {
	var ops []string
	for _, r := range cfg.Events {
		for _, op := range r.Operations {
			if !slices.Contains(ops, op) {
				ops = append(ops, op)
			}
		}
	}
	slices.Sort(ops)
	return ops
}
