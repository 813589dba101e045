package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// The setups of the application-TPS measure, in the table's order.
const (
	setupBare    = "bare"
	setupRecv    = "pg_recvlogical"
	setupWalhook = "walhook"
	setupNoYield = "walhook, cpu.yield off"
	setupTrigger = "trigger"
)

var setups = []string{setupBare, setupRecv, setupWalhook, setupNoYield, setupTrigger}

// setupsFor is the setups a run measures: walhook with cpu.yield off only
// next to walhook with it on.
func setupsFor(o options) []string {
	if o.cpuYield {
		return setups
	}
	return []string{setupBare, setupRecv, setupWalhook, setupTrigger}
}

// pgbenchScript is one seed-000-like application transaction: a chat
// message and a problem report's status change (two events for walhook and
// for the trigger design alike).
var pgbenchScript = `\set p random(1, ` + strconv.Itoa(problems) + `)
BEGIN;
INSERT INTO messages (id, auction_id, channel_id, author_id, body)
    VALUES (gen_random_uuid(), '` + auctionID + `', '` + channelID + `', '` + ownerID + `', 'pgbench message about problem ' || :p);
UPDATE problem_reports SET status = CASE status WHEN 'open' THEN 'in_progress' ELSE 'open' END, updated_at = now()
    WHERE id = ` + problemSQL + `;
END;
`

// recvTables are the tables the sample's rules read: pg_recvlogical's
// publication covers the same ones as walhook's.
const recvTables = "members, lot_submissions, inspections, inspection_defects, problem_reports, problem_actions, channels, messages"

var (
	tpsLine = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	txsLine = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
)

// eventsPerTx is how many webhooks one run of pgbenchScript makes.
const eventsPerTx = 2

// catchUpWait bounds how long the bench waits, after a pgbench run, for
// walhook to deliver every event of the run.
const catchUpWait = 5 * time.Minute

// parseTPS reads pgbench's "tps = … (without initial connection time)".
func parseTPS(out []byte) (float64, error) {
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench printed no tps line:\n%s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// parseTxs reads pgbench's "number of transactions actually processed".
func parseTxs(out []byte) (int, error) {
	m := txsLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench printed no transaction count:\n%s", out)
	}
	return strconv.Atoi(string(m[1]))
}

// pgbenchAB runs pgbench in every setup, --rounds times, each round in a
// rotated order so no setup always runs first or last on a drifting machine.
func (e *env) pgbenchAB(ctx context.Context, r *results) error {
	script := filepath.Join(e.dir, "app.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		return err
	}
	if err := e.cluster.Exec(ctx, e.db, "CREATE PUBLICATION bench_recv FOR TABLE "+recvTables); err != nil {
		return fmt.Errorf("pg_recvlogical publication: %w", err)
	}
	r.tps = map[string][]float64{}
	r.delivered = map[string][]int{}
	r.caughtUp = map[string][]time.Duration{}
	ran := setupsFor(e.o)
	for round := 0; round < e.o.rounds; round++ {
		for i := range ran {
			name := ran[(i+round)%len(ran)]
			e.say("pgbench round %d/%d: %s …", round+1, e.o.rounds, name)
			tps, err := e.pgbenchIn(ctx, name, script, round, r)
			if err != nil {
				return fmt.Errorf("pgbench (%s, round %d): %w", name, round+1, err)
			}
			r.tps[name] = append(r.tps[name], tps)
			e.say("  %.0f tps", tps)
		}
	}
	return nil
}

// pgbenchIn prepares one setup, runs pgbench in it and undoes the setup.
func (e *env) pgbenchIn(ctx context.Context, name, script string, round int, r *results) (float64, error) {
	switch name {
	case setupBare:
		tps, _, err := e.pgbench(ctx, script)
		return tps, err

	case setupRecv:
		slot := fmt.Sprintf("bench_recv_%d", round)
		if err := e.cluster.Exec(ctx, e.db, fmt.Sprintf(`SELECT pg_create_logical_replication_slot('%s', 'pgoutput')`, slot)); err != nil {
			return 0, err
		}
		defer e.dropSlot(context.WithoutCancel(ctx), slot)
		cmd := exec.Command(filepath.Join(e.cluster.BinDir, "pg_recvlogical"), "-d", e.dsn, "--slot", slot,
			"--start", "--no-loop", "-o", "proto_version=1", "-o", "publication_names=bench_recv", "-f", "/dev/null")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return 0, fmt.Errorf("pg_recvlogical: %w", err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if err := e.waitSlotActive(ctx, slot, done); err != nil {
			cmd.Process.Kill()
			return 0, fmt.Errorf("pg_recvlogical: %w\n%s", err, out.String())
		}
		tps, _, err := e.pgbench(ctx, script)
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		return tps, err

	case setupWalhook, setupNoYield:
		s, err := e.newSession("pgbench", e.o.cpuYield && name == setupWalhook)
		if err != nil {
			return 0, err
		}
		if err := s.setup(ctx); err != nil {
			return 0, err
		}
		defer s.teardown(context.WithoutCancel(ctx))
		rcv, err := e.newReceiver(false, nil)
		if err != nil {
			return 0, err
		}
		p, err := s.run()
		if err != nil {
			return 0, err
		}
		defer p.stop()
		if err := s.ready(ctx, p, 60*time.Second); err != nil {
			return 0, err
		}
		tps, txs, err := e.pgbench(ctx, script)
		if err != nil {
			return 0, err
		}
		ended := time.Now()
		r.delivered[name] = append(r.delivered[name], rcv.Unique())
		// What the application's TPS does not show: how long the run's
		// webhooks took to arrive (walhook defers while the CPUs are busy).
		want := eventsPerTx * txs
		for rcv.Unique() < want && time.Since(ended) < catchUpWait {
			if err := p.exited(); err != nil {
				return 0, err
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got := rcv.Unique(); got < want {
			return 0, fmt.Errorf("walhook delivered %d of the run's %d events within %s after it ended; log tail:\n%s", got, want, catchUpWait, tail(p.log))
		}
		r.caughtUp[name] = append(r.caughtUp[name], time.Since(ended))
		if err := p.exited(); err != nil {
			return 0, err
		}
		return tps, p.stop()

	case setupTrigger:
		if err := e.cluster.Exec(ctx, e.db, createTriggers); err != nil {
			return 0, err
		}
		defer e.cluster.Exec(context.WithoutCancel(ctx), e.db, dropTriggers+"\nTRUNCATE webhook_queue;")
		// The design's worker: LISTEN and take each notification.
		conn, err := pgx.Connect(ctx, e.dsn)
		if err != nil {
			return 0, err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if _, err := conn.Exec(ctx, "LISTEN webhooks"); err != nil {
			return 0, err
		}
		lctx, stop := context.WithCancel(ctx)
		var got atomic.Int64
		listened := make(chan struct{})
		go func() {
			defer close(listened)
			for {
				if _, err := conn.WaitForNotification(lctx); err != nil {
					return
				}
				got.Add(1)
			}
		}()
		tps, _, err := e.pgbench(ctx, script)
		stop()
		<-listened
		r.notified = append(r.notified, int(got.Load()))
		return tps, err
	}
	return 0, fmt.Errorf("unknown setup %q", name)
}

// pgbench runs the application script and returns its TPS and how many
// transactions it committed.
func (e *env) pgbench(ctx context.Context, script string) (float64, int, error) {
	if err := e.cluster.Exec(ctx, e.db, "CHECKPOINT"); err != nil {
		return 0, 0, err
	}
	secs := int(math.Ceil(e.o.duration.Seconds()))
	cmd := exec.CommandContext(ctx, filepath.Join(e.cluster.BinDir, "pgbench"), "-n",
		"-h", "127.0.0.1", "-p", strconv.Itoa(e.cluster.Port), "-U", "postgres",
		"-c", strconv.Itoa(e.o.clients), "-j", "2", "-T", strconv.Itoa(secs), "-f", script, e.db)
	cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	tps, err := parseTPS(out)
	if err != nil {
		return 0, 0, err
	}
	txs, err := parseTxs(out)
	return tps, txs, err
}

// waitSlotActive waits until a consumer holds slot.
func (e *env) waitSlotActive(ctx context.Context, slot string, exited chan error) error {
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var active bool
		if err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active); err != nil {
			return err
		}
		if active {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s not active within 30s", slot)
		}
	}
}

// dropSlot drops a slot once its walsender has let go of it: after
// pg_recvlogical exits, the server may still show the slot active for a
// moment, and dropping an active slot fails. A slot left behind would
// retain WAL through every later measure.
func (e *env) dropSlot(ctx context.Context, slot string) {
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		fmt.Fprintf(e.log, "drop slot %s: %v\n", slot, err)
		return
	}
	defer conn.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; {
		var left int
		_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, slot)
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&left); err == nil && left == 0 {
			return
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(e.log, "drop slot %s: still active after 10s\n", slot)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
