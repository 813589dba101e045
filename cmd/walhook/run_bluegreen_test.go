package main

import (
	"context"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/receiver"
)

// A blue/green switchover by logical replication with the store inside
// the source database, following docs/operations.md ("Upgrading
// PostgreSQL or moving the database"): green gets blue's schema
// (pg_dump --schema-only) and its rows by a subscription to a FOR ALL
// TABLES publication, walhook's store with them; the application stops,
// walhook drains and stops, green catches up, the subscription is
// dropped, source.dsn points at green, setup --accept-new-system, run.
// The deliveries pending at the switch are delivered from green, and the
// changes made on green, each once. PostgreSQL does not replicate
// sequences: green's delivery log sequence stayed at 1, and every attempt
// recorded there failed on a duplicate id (logged, the attempt missing
// from the delivery log) until setup, or run, moved it past the rows.
func TestRunAcrossABlueGreenSwitchover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	blue, green := pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	if err := blue.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: blue.DSN("postgres"), pool: testPool(t, blue.DSN("postgres")), schema: "walhook", slot: "wh_bluegreen"}
	rc := newRunReceiver(t, runSecret, nil)
	var release atomic.Bool
	late := newRunReceiver(t, runSecret, func(receiver.Delivery) int {
		if release.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret), runEndpoint("late", late.URL, runSecret)}
	s["delivery.retry_schedule"] = upgradeRetrySchedule()
	file, _ := runConfig(t, []byte(runItemsConfig), s)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}

	// Green: blue's schema, then its rows by logical replication.
	dump := filepath.Join(t.TempDir(), "schema.sql")
	if out, err := exec.Command(filepath.Join(blue.BinDir, "pg_dump"), "--schema-only", "-f", dump, blue.DSN("postgres")).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(green.BinDir, "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-f", dump, green.DSN("postgres")).CombinedOutput(); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if err := blue.Exec(ctx, "postgres", `CREATE PUBLICATION bluegreen FOR ALL TABLES`); err != nil {
		t.Fatal(err)
	}
	if err := green.Exec(ctx, "postgres", `CREATE SUBSCRIPTION bluegreen CONNECTION '`+blue.DSN("postgres")+`' PUBLICATION bluegreen`); err != nil {
		t.Fatal(err)
	}

	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", func() bool { return rc.Unique() == 50 }, p.diag)
	runWaitFor(t, 30*time.Second, "failed attempts to the late endpoint", func() bool {
		return db.count(t, `SELECT count(*) FROM walhook.attempts`) > 60
	}, p.diag)
	waitDrained(t, db, p)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// Green has caught up with blue once the subscription's slot has
	// confirmed blue's WAL position; then the switch.
	var x string
	if err := db.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&x); err != nil {
		t.Fatal(err)
	}
	runWaitFor(t, 30*time.Second, "green to catch up", func() bool {
		var ok bool
		return db.pool.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = 'bluegreen'`, x).
			Scan(&ok) == nil && ok
	}, nil)
	if err := green.Exec(ctx, "postgres", `DROP SUBSCRIPTION bluegreen`); err != nil {
		t.Fatal(err)
	}
	gdb := &runDB{dsn: green.DSN("postgres"), pool: testPool(t, green.DSN("postgres")), schema: "walhook", slot: db.slot}
	if got, want := gdb.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'pending'`), 50; got != want {
		t.Fatalf("green holds %d pending deliveries, want %d", got, want)
	}

	s["source.dsn"] = strings.Replace(gdb.dsn, "postgres@", "postgres:"+runDSNPassword+"@", 1)
	file, _ = runConfig(t, []byte(runItemsConfig), s)
	out, errOut, code := runCLI(t, ctx, "setup", "--config", file, "--accept-new-system")
	if code != 0 || !strings.Contains(out, "accepted a new source system") || !strings.Contains(out, "moved the store's sequence walhook.attempts_id_seq") {
		t.Fatalf("setup --accept-new-system: exit %d\n%s%s", code, out, errOut)
	}
	p = startRunProc(t, "--config", file)
	insertItems(t, gdb, 51, 80)
	runWaitFor(t, 30*time.Second, "80 deliveries", func() bool { return rc.Unique() == 80 }, p.diag)
	release.Store(true)
	runWaitFor(t, 30*time.Second, "the pending deliveries and the new ones to the late endpoint",
		func() bool { return late.Unique() == 80 }, p.diag)
	wantItemsOnce(t, rc, "r", 1, 80)
	wantItemsOnce(t, late, "late", 1, 80)
	if strings.Contains(p.stderr.String(), "duplicate key") {
		t.Errorf("run logged a duplicate key:\n%s", runTail(p.stderr.String(), 3000))
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
