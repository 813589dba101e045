package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/receiver"
)

// upgradeRetrySchedule keeps a failing endpoint's deliveries pending for
// a minute, across a pg_upgrade.
func upgradeRetrySchedule() []string {
	s := []string{"0s"}
	for range 120 {
		s = append(s, "500ms")
	}
	return s
}

// itemWebhookIDs is, per item id, the webhook ids rc received for it.
func itemWebhookIDs(t *testing.T, rc *runReceiver) map[int]map[string]bool {
	t.Helper()
	got := map[int]map[string]bool{}
	for id, body := range rc.Bodies() {
		data, _ := runBody(t, body)["data"].(map[string]any)
		n, err := strconv.Atoi(fmt.Sprint(data["id"]))
		if err != nil {
			t.Fatalf("delivery %s has no data.id: %s", id, body)
		}
		if got[int(n)] == nil {
			got[int(n)] = map[string]bool{}
		}
		got[int(n)][id] = true
	}
	return got
}

// wantItemsOnce fails unless rc received items from..to, each under one
// webhook id.
func wantItemsOnce(t *testing.T, rc *runReceiver, name string, from, to int) {
	t.Helper()
	got := itemWebhookIDs(t, rc)
	for i := from; i <= to; i++ {
		if len(got[i]) != 1 {
			t.Errorf("%s: item %d arrived under %d webhook ids, want 1", name, i, len(got[i]))
		}
	}
	if len(got) != to-from+1 {
		t.Errorf("%s: %d items arrived, want %d", name, len(got), to-from+1)
	}
}

// waitDrained is the drain step of docs/operations.md, "Upgrading
// PostgreSQL or moving the database": with the application's writes
// stopped, the server's WAL position read then, and walhook has stored
// everything up to it once the slot has confirmed it.
func waitDrained(t *testing.T, db *runDB, p *runProc) {
	t.Helper()
	ctx := context.Background()
	var x string
	if err := db.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&x); err != nil {
		t.Fatal(err)
	}
	runWaitFor(t, 30*time.Second, "the slot to confirm "+x, func() bool {
		var ok bool
		return db.pool.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`,
			db.slot, x).Scan(&ok) == nil && ok
	}, p.diag)
}

// A major-version upgrade with pg_upgrade (15 to 15 here: the same to
// walhook, a new system identifier and no logical slot carried over) with
// the store inside the source database, following the documented recipe:
// the application stops writing, walhook drains and stops, pg_upgrade,
// walhook setup --accept-new-system, run. Before it, the new system's cursor
// was refused with the fix of a different database (another store.schema,
// or teardown --store), which loses the pending deliveries; now setup
// --accept-new-system takes the store to the new system, the deliveries pending
// across the upgrade are delivered, every change after it arrives, and
// nothing twice.
func TestRunAcrossAPgUpgrade(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := pgtest.StartT(t, pgtest.Options{})
	if err := src.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_upgrade"}
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
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", func() bool { return rc.Unique() == 50 }, p.diag)
	waitDrained(t, db, p)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// With walhook stopped, check says it has read everything.
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check after the drain: exit %d\n%s%s", code, out, errOut)
	} else {
		ckWantLines(t, out, `ok    slot `+db.slot+`: .*; caught up: no change of the published tables after its position \S+ waits for walhook run`)
	}
	var oldSystem string
	if err := db.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&oldSystem); err != nil {
		t.Fatal(err)
	}
	db.pool.Close()

	if out, err := src.Upgrade(true); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	db.pool = testPool(t, src.DSN("postgres"))
	var newSystem string
	if err := db.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&newSystem); err != nil {
		t.Fatal(err)
	}
	if newSystem == oldSystem {
		t.Fatalf("pg_upgrade kept the system identifier %s", oldSystem)
	}
	if n := db.count(t, `SELECT count(*) FROM pg_replication_slots`); n != 0 {
		t.Fatalf("pg_upgrade carried %d slots", n)
	}

	// A step skipped: run refuses, and so do check and setup, each with
	// the fix for a moved database.
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, errOut, code := runCLI(t, rctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "system "+oldSystem) || !strings.Contains(errOut, "walhook setup --accept-new-system") {
		t.Fatalf("run after the upgrade: exit %d, want 1 naming the old system and setup --accept-new-system\n%s", code, runTail(errOut, 3000))
	}
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check after the upgrade: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `FAIL  slot `+db.slot+`: does not exist`,
		`FAIL  cursor: the store's cursor for slot `+db.slot+` was written while reading PostgreSQL system `+oldSystem+`.* — fix: .*walhook setup --accept-new-system`)
	for _, args := range [][]string{{"setup", "--config", file}, {"setup", "--config", file, "--accept-gap"}} { // a gap flag does not take another system's cursor
		if _, errOut, code := runCLI(t, ctx, args...); code != 1 || !strings.Contains(errOut, "walhook setup --accept-new-system") {
			t.Fatalf("%v: exit %d, want 1 with the fix setup --accept-new-system\n%s", args, code, errOut)
		}
	}
	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--accept-new-system")
	if code != 0 || !strings.Contains(out, "accepted a new source system") || strings.Contains(out, "accepted a gap") {
		t.Fatalf("setup --accept-new-system: exit %d, want 0 accepting the new system\n%s%s", code, out, errOut)
	}
	t.Logf("setup --accept-new-system:\n%s", out)
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check after setup --accept-new-system: exit %d\n%s%s", code, out, errOut)
	}
	// Once accepted, a second one finds nothing to do.
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file, "--accept-new-system"); code != 0 || strings.Contains(out, "accepted") {
		t.Fatalf("second setup --accept-new-system: exit %d\n%s%s", code, out, errOut)
	}

	p = startRunProc(t, "--config", file)
	insertItems(t, db, 51, 80)
	runWaitFor(t, 30*time.Second, "80 deliveries", func() bool { return rc.Unique() == 80 }, p.diag)
	release.Store(true)
	runWaitFor(t, 30*time.Second, "the pending deliveries and the new ones to the late endpoint",
		func() bool { return late.Unique() == 80 }, p.diag)
	wantItemsOnce(t, rc, "r", 1, 80)
	wantItemsOnce(t, late, "late", 1, 80)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// pg_upgrade under a running walhook (the recipe's stop skipped): the
// server comes back on the same address as another system. The run that
// reconnects to it stops on that, naming both systems and the restart,
// before it looks at the slot; before, it stopped with "replication slot
// does not exist … run walhook setup", and a run that found a slot there
// (setup run by then) would have streamed the new system's changes from
// the old system's cursor.
func TestRunStopsWhenThePgUpgradedSourceComesBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := pgtest.StartT(t, pgtest.Options{})
	if err := src.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_upgrade_live"}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, _ := runConfig(t, []byte(runItemsConfig), s)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 20)
	runWaitFor(t, 30*time.Second, "20 deliveries", func() bool { return rc.Unique() == 20 }, p.diag)
	db.pool.Close()
	if out, err := src.Upgrade(true); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	runWaitFor(t, 60*time.Second, "walhook run to stop", func() bool { _, ok := p.exited(); return ok }, p.diag)
	err, _ := p.exited()
	if err == nil || !strings.Contains(err.Error(), "the source is now PostgreSQL system") ||
		!strings.Contains(err.Error(), "restart walhook run") {
		t.Fatalf("run stopped with %v; want the system change named", err)
	}
}
