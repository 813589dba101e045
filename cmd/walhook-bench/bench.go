package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgcluster"
	"github.com/walhook/walhook/internal/receiver"
)

// options are the command's flags.
type options struct {
	walhook     string        // path of a built walhook; "" builds ./cmd/walhook
	samples     string        // directory with schema.sql and walhook.yaml
	changes     int           // backlog size for the saturation measure
	concurrency int           // walhook workers = per-endpoint cap = bare loop goroutines
	rate        int           // changes/s for the latency measure
	duration    time.Duration // length of the latency window and of each pgbench run
	rounds      int           // interleaved pgbench rounds
	clients     int           // pgbench clients
	fsync       bool          // PostgreSQL fsync and full_page_writes (on: the outbox is durable)
	runArgs     multiFlag     // extra arguments for `walhook run`
	keep        bool          // keep the temporary directory (configs, logs)
	skip        multiFlag     // parts to leave out: e2e, latency, pgbench
	cpuprofile  string        // CPU profile of walhook run over the saturation measure
	statements  bool          // print pg_stat_statements' top statements of the saturation measure
	storeDB     bool          // keep the outbox in a database of its own (store.dsn)
	cpuYield    bool          // walhook's cpu.yield
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func (o options) skips(part string) bool {
	for _, s := range o.skip {
		if s == part {
			return true
		}
	}
	return false
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("walhook-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.walhook, "walhook", "", "walhook binary to run (default: go build ./cmd/walhook into a temporary directory)")
	fs.StringVar(&o.samples, "samples", "", "directory holding the sample schema.sql and walhook.yaml (default: testdata/auction-excellence of the checkout)")
	fs.IntVar(&o.changes, "changes", 100000, "row changes in the backlog for the saturation measure")
	fs.IntVar(&o.concurrency, "concurrency", 32, "concurrent requests: walhook's delivery.workers and max_in_flight_per_endpoint, and the bare loop's goroutines")
	fs.IntVar(&o.rate, "rate", 1000, "changes per second for the latency measure")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "length of the latency window and of each pgbench run")
	fs.IntVar(&o.rounds, "rounds", 3, "interleaved pgbench rounds (medians are reported)")
	fs.IntVar(&o.clients, "clients", 16, "pgbench clients")
	fs.BoolVar(&o.fsync, "fsync", true, "run PostgreSQL with fsync and full_page_writes on (the outbox durable, as in production)")
	fs.Var(&o.runArgs, "run-arg", "extra argument for `walhook run` (repeatable)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory with configs and walhook logs")
	fs.Var(&o.skip, "skip", "leave out a part: e2e, latency or pgbench (repeatable)")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of walhook run over the saturation measure to this file, and `go tool pprof -top` of it to FILE.top.txt (builds walhook with a profiling hook)")
	fs.BoolVar(&o.storeDB, "store-db", false, "keep walhook's outbox in a separate database of the same cluster (store.dsn), so the source's walsender does not decode the outbox's writes")
	fs.BoolVar(&o.cpuYield, "cpu-yield", true, "walhook's cpu.yield in every measure (true is walhook's default); with true, the pgbench part also runs walhook with it off")
	fs.BoolVar(&o.statements, "statements", false, "load pg_stat_statements and print the store's costliest statements over the saturation measure")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var bad []string
	if o.changes < 1 {
		bad = append(bad, fmt.Sprintf("--changes %d: must be at least 1", o.changes))
	}
	if o.concurrency < 1 {
		bad = append(bad, fmt.Sprintf("--concurrency %d: must be at least 1", o.concurrency))
	}
	if o.rate < 1 {
		bad = append(bad, fmt.Sprintf("--rate %d: must be at least 1", o.rate))
	}
	if o.duration < time.Second {
		bad = append(bad, fmt.Sprintf("--duration %s: must be at least 1s", o.duration))
	}
	if o.rounds < 1 {
		bad = append(bad, fmt.Sprintf("--rounds %d: must be at least 1", o.rounds))
	}
	if o.clients < 1 {
		bad = append(bad, fmt.Sprintf("--clients %d: must be at least 1", o.clients))
	}
	for _, s := range o.skip {
		if s != "e2e" && s != "latency" && s != "pgbench" {
			bad = append(bad, fmt.Sprintf("--skip %q: want e2e, latency or pgbench", s))
		}
	}
	if o.cpuprofile != "" && o.walhook != "" {
		bad = append(bad, "--cpuprofile builds its own walhook: leave out --walhook")
	}
	if len(bad) > 0 {
		return o, errors.New(strings.Join(bad, "; "))
	}
	return o, nil
}

// Run is the whole command; main only calls it.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	e, err := newEnv(ctx, o, stderr)
	if err != nil {
		return err
	}
	defer e.close()

	var r results
	r.opts = o
	r.pgVersion = e.pgVersion
	if !o.skips("e2e") || !o.skips("latency") {
		if err := e.endToEnd(ctx, &r); err != nil {
			return err
		}
	}
	if !o.skips("pgbench") {
		if err := e.pgbenchAB(ctx, &r); err != nil {
			return err
		}
	}
	printTable(stdout, r)
	return nil
}

// env is one benchmark run: a temporary directory, the walhook binary, a
// PostgreSQL cluster with the sample schema, and the receiver's server.
type env struct {
	o         options
	log       io.Writer
	dir       string
	walhook   string
	samples   string
	cluster   *pgcluster.Cluster
	db        string
	dsn       string
	storeDSN  string // walhook's store: dsn, or a database of its own with --store-db
	pgVersion string

	secret  string
	key     []byte
	rcvURL  string
	current atomic.Pointer[receiver.Receiver]
	srv     *http.Server
	seq     int // names of walhook sessions
}

func newEnv(ctx context.Context, o options, log io.Writer) (_ *env, err error) {
	e := &env{o: o, log: log}
	e.dir, err = os.MkdirTemp("", "walhook-bench-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.samples, err = findSamples(o.samples); err != nil {
		return nil, err
	}
	if o.cpuprofile != "" {
		e.say("building walhook with a profiling hook …")
		if e.walhook, err = buildProfiling(ctx, e.dir); err != nil {
			return nil, err
		}
	} else if e.walhook = o.walhook; e.walhook == "" {
		e.say("building walhook …")
		if e.walhook, err = buildWalhook(ctx, e.dir); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(e.walhook); err != nil {
		return nil, fmt.Errorf("--walhook %s: %w", e.walhook, err)
	}
	e.say("starting PostgreSQL (fsync %v) …", o.fsync)
	settings := map[string]string{"max_wal_size": "'2GB'"}
	if o.fsync {
		// Both, as in production: fsync alone leaves a page torn by a
		// crash mid-write unrecoverable (pgcluster turns both off for tests).
		settings["fsync"] = "on"
		settings["full_page_writes"] = "on"
	}
	if o.statements {
		settings["shared_preload_libraries"] = "'pg_stat_statements'"
		settings["pg_stat_statements.track"] = "'all'"
	}
	if e.cluster, err = pgcluster.Start(pgcluster.Options{Settings: settings}); err != nil {
		return nil, err
	}
	e.db = "bench"
	e.dsn = e.cluster.DSN(e.db)
	e.storeDSN = e.dsn
	if o.storeDB {
		store, err := e.cluster.CreateDatabase(ctx)
		if err != nil {
			return nil, err
		}
		e.storeDSN = e.cluster.DSN(store)
	}
	if err := e.loadSchema(ctx); err != nil {
		return nil, err
	}
	e.secret = dispatch.NewSecret()
	if e.key, err = dispatch.DecodeSecret(e.secret); err != nil {
		return nil, err
	}
	return e, e.startReceiver()
}

func (e *env) say(format string, args ...any) {
	fmt.Fprintf(e.log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (e *env) close() {
	if e.srv != nil {
		e.srv.Close()
	}
	if e.cluster != nil {
		e.cluster.Remove()
	}
	if e.o.keep {
		e.say("kept %s", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}

// startReceiver serves the current receiver (swapped per measure, so each
// counts only its own deliveries) on a loopback port.
func (e *env) startReceiver() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("receiver: %w", err)
	}
	e.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rc := e.current.Load(); rc != nil {
				rc.ServeHTTP(w, r)
				return
			}
			http.Error(w, "no receiver", http.StatusServiceUnavailable)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go e.srv.Serve(ln)
	e.rcvURL = "http://" + ln.Addr().String() + "/webhooks"
	return nil
}

// newReceiver installs a fresh verifying receiver and returns it.
// onDelivery, when set, is called for every verified request.
func (e *env) newReceiver(keepBodies bool, onDelivery func(receiver.Delivery)) (*receiver.Receiver, error) {
	rc, err := receiver.New(keepBodies, e.secret)
	if err != nil {
		return nil, err
	}
	rc.OnDelivery = onDelivery
	e.current.Store(rc)
	return rc, nil
}

// findSamples returns the sample directory: the flag, or
// testdata/auction-excellence in the current directory or above.
func findSamples(flagDir string) (string, error) {
	const sub = "testdata/auction-excellence"
	has := func(d string) bool {
		for _, f := range []string{"schema.sql", "walhook.yaml"} {
			if _, err := os.Stat(filepath.Join(d, f)); err != nil {
				return false
			}
		}
		return true
	}
	if flagDir != "" {
		if !has(flagDir) {
			return "", fmt.Errorf("--samples %s: must hold schema.sql and walhook.yaml", flagDir)
		}
		return flagDir, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if d := filepath.Join(root, sub); has(d) {
		return d, nil
	}
	return "", fmt.Errorf("%s/schema.sql and walhook.yaml not found in %s; pass --samples DIR", sub, root)
}

// moduleRoot is the directory of walhook's go.mod, found from the working
// directory upwards (go run and go test run anywhere in the checkout).
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/walhook/walhook\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("not inside a walhook checkout (no go.mod of github.com/walhook/walhook above %s): run from the checkout or pass --walhook and --samples", wd)
		}
	}
}

// cpus describes the machine for the table's heading.
func cpus() string {
	return fmt.Sprintf("%d CPUs (GOMAXPROCS %d)", runtime.NumCPU(), runtime.GOMAXPROCS(0))
}
