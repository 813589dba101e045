// Command walhook tails a PostgreSQL WAL through logical replication, maps
// row changes to business events and delivers them as signed webhooks.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	// The time zone database, built in: a when: rule may name a zone
	// (date(…, "Europe/Berlin"), timezone(…)), and container images
	// (debian-slim, distroless) have no /usr/share/zoneinfo.
	_ "time/tzdata"
)

func main() {
	tuneGC(os.Getenv, containerMemoryLimit())
	ownsProcess = true
	// A second Ctrl-C ends a stop that waits on others (run's on a hung
	// receiver or store, a setup's on a long source transaction), except
	// demo's: its cleanup removes the cluster it made, and must not be cut
	// short.
	exit := os.Exit
	if len(os.Args) > 1 && os.Args[1] == "demo" {
		exit = nil // a second signal changes nothing
	}
	ctx, stop := stopOnSignals(os.Stderr, exit)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, ErrHelpShown) {
		fmt.Fprintln(os.Stderr, "walhook:", errorText(err))
	}
	os.Exit(ExitCode(err))
}

// errorText is err's message without lines that only repeat an earlier
// one. pgx joins the error of every address and TLS mode it tried, and a
// host name that does not resolve fails the same way for each:
// "hostname resolving error: lookup db: no such host" then "lookup db:
// no such host" again.
func errorText(err error) string {
	lines := strings.Split(err.Error(), "\n")
	kept := lines[:0]
	for _, l := range lines {
		t := strings.TrimSpace(l)
		repeated := false
		for _, k := range kept {
			k = strings.TrimSpace(k)
			if t != "" && (k == t || strings.HasSuffix(k, ": "+t)) {
				repeated = true
				break
			}
		}
		if !repeated {
			kept = append(kept, l)
		}
	}
	return strings.Join(kept, "\n")
}

// stopSignals end walhook gracefully. SIGHUP is among them unless the
// process was started with it ignored (nohup): walhook reloads nothing,
// and a closed terminal (a demo, a foreground run) should stop it cleanly
// rather than kill it mid-attempt.
func stopSignals() []os.Signal {
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		sigs = append(sigs, syscall.SIGHUP)
	}
	return sigs
}

// stopOnSignals returns a context that the first of stopSignals cancels,
// which starts a graceful stop. Unless exit is nil, a SIGINT or SIGTERM
// after it exits at once with status 1 (exit): the way out of a stop that
// waits on a hung receiver or store, at the cost of a crash (attempts in
// flight are sent again once their lease passes; nothing is lost). A
// further SIGHUP does not (a closing terminal may send more than one).
// stop releases the signals.
func stopOnSignals(stderr io.Writer, exit func(int)) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, stopSignals()...)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-done:
			return
		}
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGHUP || exit == nil {
					continue
				}
				fmt.Fprintf(stderr, "walhook: %v again: exiting now, without finishing the graceful stop "+
					"(attempts in flight are sent again after their lease)\n", s)
				exit(1)
				return
			case <-done:
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

// ownsProcess is set when Run runs as the walhook binary, not inside a test
// binary or another program: only then may `walhook run` change settings
// of the whole process, such as its threads' CPU priority (cpu.yield).
var ownsProcess bool

// The Go garbage collector's defaults for walhook, unless the environment
// sets its own (GOGC, GOMEMLIMIT). walhook's live heap is small (tens of
// MiB: a bounded transaction buffer and the deliveries in hand) and it
// allocates per event and per request, so at the default GOGC=100 the
// collector took a sixth of its CPU at saturation. GOGC=400 cut walhook's
// CPU per delivery by about a sixth for some 25 MiB more peak memory
// (docs/benchmarks.md); the soft limit makes the collector work harder
// instead of growing the heap past it.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 512 << 20
)

// tuneGC applies the defaults above where getenv does not set GOGC or
// GOMEMLIMIT. In a container whose memory limit (memLimit, 0 for none) is
// under defaultMemoryLimit/0.8 the soft limit is 80 % of it instead: a
// soft limit above the container's would let the heap grow at GOGC=400
// until the kernel kills the process, where the collector should have
// worked harder.
func tuneGC(getenv func(string) string, memLimit int64) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		limit := int64(defaultMemoryLimit)
		if memLimit > 0 {
			limit = min(limit, memLimit/10*8)
		}
		debug.SetMemoryLimit(limit)
	}
}

// containerMemoryLimit is the memory limit of the cgroup walhook runs in
// (cgroup v2's memory.max, else v1's memory.limit_in_bytes), 0 when there
// is none or it cannot be read.
func containerMemoryLimit() int64 {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<50 { // "max", or v1's "unlimited" (a page-rounded MaxInt64)
			return 0
		}
		return n
	}
	return 0
}
