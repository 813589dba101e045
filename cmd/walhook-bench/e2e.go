package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/receiver"
)

// results is everything the table shows.
type results struct {
	opts      options
	pgVersion string

	// saturation
	backlog     int           // changes in the slot before walhook started
	loadTime    time.Duration // writing the backlog
	e2eTime     time.Duration // walhook run start → receiver holds all
	e2eFirst    time.Duration // walhook run start → first delivery
	e2eIngest   time.Duration // walhook run start → every delivery row in the outbox
	e2eDups     int
	bareTime    time.Duration
	bareFailed  int
	bareUnique  int
	e2eRejected int
	e2eCPU      time.Duration // machine busy CPU time over the saturation measure
	walhookCPU  time.Duration // of it, the walhook process
	e2eSelfCPU  time.Duration // of it, the bench process: the receiver (and the probes)
	walhookRSS  int64         // walhook's peak resident memory, bytes
	bareCPU     time.Duration // machine busy CPU time over the bare loop
	bareSelfCPU time.Duration // of it, the bench process: the client and the receiver
	settleTime  time.Duration // after the backlog, until every outcome was recorded

	// latency
	latSent, latMatched  int
	latWindow            time.Duration // how long the paced load took
	clientP50, clientP99 time.Duration
	stampP50, stampP99   time.Duration

	// pgbench: TPS per setup, one per round, in round order
	tps       map[string][]float64
	delivered map[string][]int // walhook setups: deliveries received during each pgbench run
	notified  []int            // trigger rounds: notifications received
	// walhook setups: time from the end of each pgbench run until the
	// receiver had every event of the run
	caughtUp map[string][]time.Duration
}

// endToEnd measures saturation (backlog → receiver), the bare loop over the
// same bodies, and latency at a steady rate with the same walhook still
// running.
func (e *env) endToEnd(ctx context.Context, r *results) error {
	s, err := e.newSession("e2e", e.o.cpuYield)
	if err != nil {
		return err
	}
	if err := s.setup(ctx); err != nil {
		return err
	}
	defer s.teardown(context.WithoutCancel(ctx))

	var rcv *receiver.Receiver
	var p *proc
	if !e.o.skips("e2e") {
		n := e.o.changes
		e.say("writing a backlog of %d changes (slot %s) …", n, s.name)
		t0 := time.Now()
		want, err := load{dsn: e.dsn, workers: 8, asyncCommit: true}.run(ctx, n)
		if err != nil {
			return err
		}
		r.backlog, r.loadTime = n, time.Since(t0)
		// Flush the backlog's WAL (written with synchronous_commit off;
		// walsenders send only flushed WAL) and take the checkpoint now
		// rather than during the measure.
		// The WAL position after the backlog, read before the checkpoint
		// so that only the backlog's commits lie behind it.
		walEnd, err := e.walPosition(ctx)
		if err != nil {
			return err
		}
		if err := e.cluster.Exec(ctx, e.db, "CHECKPOINT"); err != nil {
			return err
		}
		var first atomic.Int64
		if rcv, err = e.newReceiver(true, func(d receiver.Delivery) { first.CompareAndSwap(0, d.At.UnixNano()) }); err != nil {
			return err
		}
		var prof *profiler
		if e.o.cpuprofile != "" {
			if prof, err = newProfiler(e.o.cpuprofile); err != nil {
				return err
			}
			s.env = prof.env()
		}
		if e.o.statements {
			if err := e.cluster.Exec(ctx, e.db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()"); err != nil {
				return err
			}
		}
		e.say("starting walhook run on the backlog …")
		if p, err = s.run(); err != nil {
			return err
		}
		defer p.stop()
		cpu := startCPU()
		ingest := e.watchIngest(ctx, s.name, walEnd, p.start)
		if err := waitFor(ctx, p, rcv, n, 60*time.Second+time.Duration(n)*2*time.Millisecond); err != nil {
			return fmt.Errorf("%w\nexpected per event: %v\nreceived per event: %v", err, fmtCounts(want), fmtCounts(rcv.Counts()))
		}
		r.e2eTime = time.Since(p.start)
		r.e2eCPU = cpu.since()
		r.e2eSelfCPU = cpu.selfSince()
		r.walhookCPU, _ = processCPU(p.cmd.Process.Pid)
		r.walhookRSS, _ = peakRSS(p.cmd.Process.Pid)
		r.e2eFirst = time.Unix(0, first.Load()).Sub(p.start)
		r.e2eDups, r.e2eRejected = rcv.Duplicates(), rcv.Rejected()
		r.e2eIngest = ingest()
		if e.o.statements {
			if err := e.printStatements(ctx, s.name); err != nil {
				return err
			}
		}
		if prof != nil {
			top, err := prof.stop(ctx, e.walhook)
			if err != nil {
				return err
			}
			e.say("cpu profile of walhook run: %s (top: %s)", prof.file, top)
		}
		e.say("  %d deliveries in %s: %.0f/s", n, r.e2eTime.Round(time.Millisecond), float64(n)/r.e2eTime.Seconds())
	}

	if !e.o.skips("latency") {
		if p == nil {
			if p, err = s.run(); err != nil {
				return err
			}
			defer p.stop()
		} else {
			// Latency is measured at a steady rate: let the walhook that
			// just drained the backlog finish its after-work first.
			if err := e.settle(ctx, s.name, p, r); err != nil {
				return err
			}
		}
		if err := s.ready(ctx, p, 60*time.Second); err != nil {
			return err
		}
		if err := e.latency(ctx, p, r); err != nil {
			return err
		}
	}
	if p != nil {
		if err := p.stop(); err != nil {
			return err
		}
	}
	if rcv != nil {
		e.current.Store(rcv) // the bare loop posts to the same receiver
		if err := e.bareLoop(ctx, rcv, r); err != nil {
			return err
		}
	}
	return nil
}

// settle waits until every delivery of the backlog is recorded as
// delivered in the store, nothing is pending or in flight, and walhook's
// cursor has passed the WAL written until then: the state a steady rate
// starts from. Right after the receiver holds the last delivery, the
// walsender still has to read the WAL of the store's writes during the
// drain (the store is in the source database: it decodes them, then
// skips them), and a load started then waited 0.1–0.6 s behind it in its
// first second.
func (e *env) settle(ctx context.Context, schema string, p *proc, r *results) error {
	conn, err := pgx.Connect(ctx, e.storeDSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	t := pgx.Identifier{schema, "deliveries"}.Sanitize()
	q := "SELECT (SELECT count(*) FROM " + t + " WHERE status = 'delivered'), " +
		"(SELECT count(*) FROM " + t + " WHERE status = 'pending') + (SELECT count(*) FROM " + t + " WHERE status = 'delivering')"
	start := time.Now()
	for deadline := start.Add(60 * time.Second); ; {
		var delivered, open int
		if err := conn.QueryRow(ctx, q).Scan(&delivered, &open); err != nil {
			return err
		}
		if delivered >= r.backlog && open == 0 {
			break
		}
		if err := p.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after the backlog: %d of %d deliveries recorded, %d open, 60s after the receiver had them all", delivered, r.backlog, open)
		}
		time.Sleep(20 * time.Millisecond)
	}
	walEnd, err := e.walPosition(ctx)
	if err != nil {
		return err
	}
	q = "SELECT coalesce(max(lsn) >= $1::pg_lsn, false) FROM " + pgx.Identifier{schema, "cursor"}.Sanitize()
	for deadline := time.Now().Add(60 * time.Second); ; {
		var reached bool
		if err := conn.QueryRow(ctx, q, walEnd).Scan(&reached); err != nil {
			return err
		}
		if reached {
			r.settleTime = time.Since(start)
			return nil
		}
		if err := p.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after the backlog: walhook's cursor did not reach %s within 60s", walEnd)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchIngest polls the cursor of the session's store until it reaches
// walEnd (the WAL position after the backlog was written) and returns a
// function giving how long after start that took (0 if not yet seen): the
// rate of cdc → mapper → Append, apart from delivery. Reading the one
// cursor row keeps the probe O(1), so it does not slow what it measures.
func (e *env) watchIngest(ctx context.Context, schema, walEnd string, start time.Time) func() time.Duration {
	var at atomic.Int64
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := pgx.Connect(ctx, e.storeDSN)
		if err != nil {
			return
		}
		defer conn.Close(context.WithoutCancel(ctx))
		q := "SELECT coalesce(max(lsn) >= $1::pg_lsn, false) FROM " + pgx.Identifier{schema, "cursor"}.Sanitize()
		// After the cancel (the receiver holds everything) it keeps looking
		// for a while: a record written after the backlog's last commit
		// (a checkpoint's, say) keeps the cursor below walEnd until walhook's
		// next heartbeat (every 5 s) moves it past; the time is then an
		// upper bound.
		var grace <-chan time.Time
		for {
			var reached bool
			err := conn.QueryRow(context.WithoutCancel(ctx), q, walEnd).Scan(&reached)
			if err == nil && reached {
				at.Store(int64(time.Since(start)))
				return
			}
			if err != nil && ctx.Err() != nil {
				return
			}
			if grace == nil && ctx.Err() != nil {
				grace = time.After(10 * time.Second)
			}
			select {
			case <-grace:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() time.Duration {
		cancel()
		<-done
		return time.Duration(at.Load())
	}
}

// waitFor polls until the receiver holds n unique deliveries.
func waitFor(ctx context.Context, p *proc, rcv *receiver.Receiver, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for rcv.Unique() < n {
		if err := p.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("receiver has %d of %d deliveries after %s (rejected %d); walhook log tail:\n%s",
				rcv.Unique(), n, timeout, rcv.Rejected(), tail(p.log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// latency writes changes at a steady rate for --duration and measures
// commit → receiver for each.
func (e *env) latency(ctx context.Context, p *proc, r *results) error {
	lat := newLatencies()
	if _, err := e.newReceiver(false, lat.delivered); err != nil {
		return err
	}
	n := int(float64(e.o.rate) * e.o.duration.Seconds())
	e.say("latency: %d changes at %d/s …", n, e.o.rate)
	start := time.Now()
	if _, err := (load{dsn: e.dsn, workers: 8, rate: float64(e.o.rate), before: lat.before}).run(ctx, n); err != nil {
		return err
	}
	r.latWindow = time.Since(start)
	deadline := time.Now().Add(30 * time.Second)
	for lat.matched() < n && time.Now().Before(deadline) {
		if err := p.exited(); err != nil {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	lat.mu.Lock()
	defer lat.mu.Unlock()
	r.latSent, r.latMatched = n, len(lat.seen)
	r.clientP50, r.clientP99 = quantile(lat.client, 0.50), quantile(lat.client, 0.99)
	r.stampP50, r.stampP99 = quantile(lat.stamp, 0.50), quantile(lat.stamp, 0.99)
	if r.latMatched < n {
		return fmt.Errorf("latency: %d of %d changes delivered within 30s after the load; walhook log tail:\n%s", r.latMatched, n, tail(p.log))
	}
	e.say("  p50 %s p99 %s (client clock)", r.clientP50, r.clientP99)
	return nil
}

// bareLoop signs (dispatch.Sign via dispatch.Client, walhook's own client
// and transport) and POSTs the bodies walhook delivered, under new ids, to
// the same receiver with the same concurrency: the HTTP ceiling.
func (e *env) bareLoop(ctx context.Context, rcv *receiver.Receiver, r *results) error {
	type item struct {
		id, event string
		body      []byte
	}
	var items []item
	for id, body := range rcv.Bodies() {
		var env struct {
			Event string `json:"event"`
		}
		_ = json.Unmarshal(body, &env)
		items = append(items, item{"bare-" + id, env.Event, body})
	}
	client, err := dispatch.NewClient(dispatch.ClientOptions{Allow: []string{"127.0.0.1"},
		UserAgent: "AuctionExcellence-Webhook/1.0", Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	before := rcv.Unique()
	keys := [][]byte{e.key}
	e.say("bare loop: %d signed POSTs, %d at a time …", len(items), e.o.concurrency)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	cpu := startCPU()
	start := time.Now()
	for w := 0; w < e.o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(items) || ctx.Err() != nil {
					return
				}
				it := items[i]
				res := client.Send(ctx, dispatch.Request{URL: e.rcvURL, ID: it.id, Event: it.event, Body: it.body, Keys: keys})
				if !res.OK() {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	r.bareTime = time.Since(start)
	r.bareCPU = cpu.since()
	r.bareSelfCPU = cpu.selfSince()
	r.bareFailed = int(failed.Load())
	r.bareUnique = rcv.Unique() - before
	if r.bareFailed > 0 || r.bareUnique != len(items) {
		return fmt.Errorf("bare loop: %d of %d requests failed, receiver took %d", r.bareFailed, len(items), r.bareUnique)
	}
	e.say("  %d in %s: %.0f/s", len(items), r.bareTime.Round(time.Millisecond), float64(len(items))/r.bareTime.Seconds())
	return nil
}

func fmtCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// walPosition is the current WAL insert position, as text.
func (e *env) walPosition(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var lsn string
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	return lsn, err
}

// printStatements prints the store's statements (those naming its schema)
// that took the most execution time since the reset before the saturation
// measure. Catalog reads and one-off statements of walhook's start are
// left out: with a small backlog they outweighed the claim.
func (e *env) printStatements(ctx context.Context, schema string) error {
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT calls, rows, total_exec_time, mean_exec_time,
			regexp_replace(left(query, 160), '\s+', ' ', 'g')
		FROM pg_stat_statements WHERE strpos(query, $1) > 0
		ORDER BY total_exec_time DESC LIMIT 12`, pgx.Identifier{schema}.Sanitize()+".")
	if err != nil {
		return err
	}
	defer rows.Close()
	e.say("store statements over the saturation measure (pg_stat_statements, by total time):")
	e.say("  %8s %9s %9s %8s  %s", "calls", "rows", "total ms", "mean ms", "query")
	for rows.Next() {
		var calls, n int64
		var total, mean float64
		var q string
		if err := rows.Scan(&calls, &n, &total, &mean, &q); err != nil {
			return err
		}
		e.say("  %8d %9d %9.0f %8.3f  %s", calls, n, total, mean, q)
	}
	return rows.Err()
}
