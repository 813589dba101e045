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

// The store moved from the source database to a cluster of its own, as
// docs/operations.md ("Moving the store") says: walhook stops, pg_dump -n
// walhook, pg_restore on the new cluster, store.dsn set, check, run. The
// cursor and the deliveries pending at the move come along; the old copy,
// run by a config that still names it, is refused once the new store has
// moved the slot on (its cursor is behind the slot), before it sends
// anything: it used to start its dispatcher first, which sent the old
// copy's pending deliveries, delivered from the new store, again.
func TestRunAfterTheStoreMoved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src, store := pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	if err := src.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_storemove"}
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
	oldFile, _ := runConfig(t, []byte(runItemsConfig), s)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", oldFile); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	p := startRunProc(t, "--config", oldFile)
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", func() bool { return rc.Unique() == 50 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	cursor := db.cursor(t)

	dump := filepath.Join(t.TempDir(), "walhook.dump")
	if out, err := exec.Command(filepath.Join(src.BinDir, "pg_dump"), "-Fc", "-n", "walhook", "-f", dump, src.DSN("postgres")).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(store.BinDir, "pg_restore"), "--exit-on-error", "-d", store.DSN("postgres"), dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	// The application writes on meanwhile: the slot keeps the changes.
	insertItems(t, db, 51, 60)

	s["store.dsn"] = strings.Replace(store.DSN("postgres"), "postgres@", "postgres:"+runDSNPassword+"@", 1)
	file, _ := runConfig(t, []byte(runItemsConfig), s)
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check with the moved store: exit %d\n%s%s", code, out, errOut)
	} else {
		ckWantLines(t, out, `ok    slot `+db.slot+`: .*; 10 changes of the published tables after its position \S+ wait for walhook run`)
	}
	spool := testPool(t, store.DSN("postgres"))
	if got := db.cursorIn(t, spool); got != cursor {
		t.Fatalf("moved store's cursor %s, want %s", got, cursor)
	}
	p = startRunProc(t, "--config", file)
	insertItems(t, db, 61, 80)
	runWaitFor(t, 30*time.Second, "80 deliveries", func() bool { return rc.Unique() == 80 }, p.diag)
	release.Store(true)
	runWaitFor(t, 30*time.Second, "the pending deliveries and the new ones to the late endpoint",
		func() bool { return late.Unique() == 80 }, p.diag)
	wantItemsOnce(t, rc, "r", 1, 80)
	wantItemsOnce(t, late, "late", 1, 80)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}

	// The old copy, left in the source database, is refused.
	before := len(late.deliveries())
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, errOut, code := runCLI(t, rctx, "run", "--config", oldFile); code != 1 || !strings.Contains(errOut, "a copy of a store that moved elsewhere") {
		t.Fatalf("run on the old store: exit %d, want 1 and the cursor behind the slot\n%s", code, runTail(errOut, 3000))
	}
	if n := len(late.deliveries()); n != before {
		t.Errorf("the old store's run sent %d requests before it was refused", n-before)
	}
}
