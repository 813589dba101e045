// Command walhook tails a PostgreSQL WAL through logical replication, maps
// row changes to business events and delivers them as signed webhooks.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	tuneGC(os.Getenv)
	ownsProcess = true
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, ErrHelpShown) {
		fmt.Fprintln(os.Stderr, "walhook:", err)
	}
	os.Exit(ExitCode(err))
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
// GOMEMLIMIT.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}
