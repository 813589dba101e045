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

// The source database moved to a new cluster by pg_dump and pg_restore,
// the store inside it, following docs/operations.md ("Upgrading
// PostgreSQL or moving the database"): the new cluster's WAL starts far
// behind the old one's positions, and its xids over again. After setup
// --accept-new-system the pending deliveries go out from the restored
// store and every change on the new cluster arrives, each once.
func TestRunAcrossADumpAndRestore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	old, next := pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	if err := old.Exec(ctx, "postgres", runItemsSchema+`; SELECT pg_switch_wal(); SELECT pg_switch_wal();`); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: old.DSN("postgres"), pool: testPool(t, old.DSN("postgres")), schema: "walhook", slot: "wh_restore"}
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
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check after the drain: exit %d\n%s%s", code, out, errOut)
	} else {
		ckWantLines(t, out, `ok    slot `+db.slot+`: .*; caught up: no change`)
	}

	oldCursor := db.cursor(t)
	dump := filepath.Join(t.TempDir(), "db.dump")
	if out, err := exec.Command(filepath.Join(old.BinDir, "pg_dump"), "-Fc", "-f", dump, old.DSN("postgres")).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(next.BinDir, "pg_restore"), "--exit-on-error", "-d", next.DSN("postgres"), dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	ndb := &runDB{dsn: next.DSN("postgres"), pool: testPool(t, next.DSN("postgres")), schema: "walhook", slot: db.slot}
	s["source.dsn"] = strings.Replace(ndb.dsn, "postgres@", "postgres:"+runDSNPassword+"@", 1)
	file, _ = runConfig(t, []byte(runItemsConfig), s)
	out, errOut, code := runCLI(t, ctx, "setup", "--config", file, "--accept-new-system")
	if code != 0 || !strings.Contains(out, "accepted a new source system") {
		t.Fatalf("setup --accept-new-system: exit %d\n%s%s", code, out, errOut)
	}
	if slot := ndb.slotLSN(t); slot >= oldCursor {
		t.Fatalf("the new cluster's slot is at %s, not behind the old cursor %s as this test means", slot, oldCursor)
	}
	p = startRunProc(t, "--config", file)
	insertItems(t, ndb, 51, 80)
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
