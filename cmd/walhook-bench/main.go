// Command walhook-bench is the end-to-end benchmark of issue 5: it drives the
// real walhook binary as users do (`walhook setup`, `walhook run` as
// subprocesses) against a throwaway PostgreSQL, with a verifying receiver in
// this process, and prints one table:
//
//   - deliveries/s at saturation: a backlog of --changes row changes (a mix
//     of seed-000 changes) already in the slot before walhook starts, timed
//     from the start of `walhook run` until the receiver holds every one
//     (unique webhook ids); next to a bare loop that signs and POSTs the
//     same bodies to the same receiver with the same concurrency (the HTTP
//     ceiling of the machine), and their ratio;
//   - commit → receiver latency p50/p99 at a steady --rate changes/s;
//   - application TPS under pgbench (16 clients, a seed-000-like script) in
//     setups interleaved over --rounds rounds, medians: no consumer,
//     pg_recvlogical alone, walhook attached (as configured by default, and
//     with cpu.yield off), and seed 000's trigger + queue table + pg_notify
//     design.
//
// Usage:
//
//	go run ./cmd/walhook-bench                                   # full size (~8 minutes)
//	go run ./cmd/walhook-bench --changes 2000 --rounds 1 --duration 3s   # a quick look
//
// Targets are reported, never asserted: the machine is shared and noisy.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "walhook-bench:", err)
		os.Exit(1)
	}
}
