package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// The slot is invalidated by max_slot_wal_keep_size while walhook is
// stopped (wal_status = lost, the slot still listed). run and check say so
// with the fix `walhook teardown && walhook setup --accept-gap`, and setup
// (also with --accept-gap alone, after a failover the usual step) refuses
// the slot with the same fix: it kept it and exited 0, as if ready, over a
// slot run refuses. Then the documented recovery is run end to end.
func TestSetupRefusesALostSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{
		"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0", "min_wal_size": "32MB", "max_wal_size": "64MB"}})
	db := &runDB{dsn: c.DSN("postgres"), pool: testPool(t, c.DSN("postgres")), schema: "walhook", slot: "wh_revops_lost"}
	if _, err := db.pool.Exec(ctx, runItemsSchema+`CREATE TABLE filler (id int, pad text);`); err != nil {
		t.Fatalf("load schema: %v", err)
	}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	runItemsUntil(t, db, file, rc, 1, 5, 5, "the first 5 deliveries")

	// walhook is stopped; the application writes on (an unpublished
	// table) until PostgreSQL invalidates the slot.
	lost := false
	for i := 0; i < 60 && !lost; i++ {
		var ws *string
		if err := db.pool.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, db.slot).Scan(&ws); err != nil {
			t.Fatal(err)
		}
		if ws != nil && *ws == "lost" {
			lost = true
			break
		}
		db.exec(t, fmt.Sprintf(`INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series(%d, %d) g`, i*10000, i*10000+9999))
		db.exec(t, `SELECT pg_switch_wal()`)
		db.exec(t, `CHECKPOINT`)
	}
	if !lost {
		t.Fatal("the slot was never invalidated")
	}
	insertItems(t, db, 6, 10) // made after the loss: gone with it? no, after; but before recovery

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, errOut, code := runCLI(t, rctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "replication slot was invalidated") {
		t.Fatalf("run on a lost slot: exit %d, want 1 naming the lost slot; stderr:\n%s", code, runTail(errOut, 3000))
	}
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 1 {
		t.Errorf("check on a lost slot: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `FAIL  slot `+db.slot+`: is invalidated \(wal_status lost\).* — fix: walhook teardown && walhook setup --accept-gap`)

	for _, args := range [][]string{{"setup", "--config", file}, {"setup", "--config", file, "--accept-gap"}} {
		out, errOut, code = runCLI(t, ctx, args...)
		if code != 1 || !strings.Contains(errOut, `slot "`+db.slot+`" is invalidated (wal_status lost`) ||
			!strings.Contains(errOut, "fix: walhook teardown && walhook setup --accept-gap") {
			t.Errorf("%v on an invalidated slot: exit %d, want 1 with the slot and the fix\n%s%s", args, code, out, errOut)
		}
	}
	if _, errOut, code := runCLI(t, rctx, "run", "--config", file); code != 1 || !strings.Contains(errOut, "replication slot was invalidated") {
		t.Fatalf("run after setup: exit %d\n%s", code, runTail(errOut, 2000))
	}

	// The documented recovery, end to end.
	if out, errOut, code := runCLI(t, ctx, "teardown", "--config", file); code != 0 {
		t.Fatalf("teardown: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--accept-gap")
	if code != 0 {
		t.Fatalf("setup --accept-gap after teardown: exit %d\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `created replication slot `+db.slot, `accepted a gap: the store's cursor for slot `+db.slot+` moved from \S+ to \S+`)
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check after the recovery: exit %d\n%s%s", code, out, errOut)
	}
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 11, 15)
	runWaitFor(t, 30*time.Second, "the 5 deliveries after the recovery", func() bool { return rc.Unique() == 10 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
