package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// setup --skip-to refuses what would lose more than asked, or what a
// running walhook would undo, and then changes nothing.
func TestSetupSkipToRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	setup := func(wantCode int, wantErr string, args ...string) {
		t.Helper()
		out, errOut, code := runCLI(t, ctx, append([]string{"setup", "--config", file}, args...)...)
		if code != wantCode || !strings.Contains(errOut, wantErr) || out != "" {
			t.Errorf("setup %s: exit %d, stdout %q, stderr %q; want exit %d and %q", strings.Join(args, " "), code, out, errOut, wantCode, wantErr)
		}
	}

	setup(2, `--skip-to "0/1A-B" is not an LSN`, "--skip-to", "0/1A-B")
	setup(2, `--skip-to and --accept-gap do not go together`, "--skip-to", "0/1A", "--accept-gap")
	setup(1, "the store holds no cursor for slot "+db.slot, "--skip-to", "0/1A")
	_, other := runConfig(t, []byte(runItemsConfig), func() map[string]any {
		s := db.settings()
		s["store.schema"] = "nostore"
		return s
	}())
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", other.File, "--skip-to", "0/1A"); code != 1 ||
		!strings.Contains(errOut, "there is no walhook store in schema nostore") {
		t.Errorf("setup --skip-to without a store: exit %d\n%s%s", code, out, errOut)
	}

	runItemsUntil(t, db, file, rc, 1, 3, 3, "3 deliveries")
	db.slotLSN(t)
	cursor := db.cursor(t)
	setup(1, "the cursor for slot "+db.slot+" is already at "+cursor.String(), "--skip-to", cursor.String())
	setup(1, "the cursor for slot "+db.slot+" is already at "+cursor.String(), "--skip-to", (cursor - 1).String())
	var walEnd string
	if err := db.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&walEnd); err != nil {
		t.Fatal(err)
	}
	end, err := pglogrepl.ParseLSN(walEnd)
	if err != nil {
		t.Fatal(err)
	}
	past := end + 1<<32
	setup(1, "--skip-to "+past.String()+" is past the server's current WAL position", "--skip-to", past.String())

	// A walhook leading on this store (it holds the leader lock).
	pc, err := db.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn := pc.Hijack()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended($1, 0))`, leaderLockKey(db.schema, db.slot)); err != nil {
		t.Fatal(err)
	}
	setup(1, "a walhook leads slot "+db.slot+" on this store (it holds the leader lock); stop every walhook on this store", "--skip-to", end.String())
	conn.Close(ctx)

	// Anything streaming from the slot.
	ckHoldSlot(t, db.dsn, db.slot)
	setup(1, fmt.Sprintf("slot %q is held by the server process with PID", db.slot), "--skip-to", end.String())

	// The slot gone (lost, or dropped by hand): there is nothing to move
	// the cursor on.
	if _, err := db.pool.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, db.slot); err != nil {
		t.Fatal(err)
	}
	for i := 0; ckScalar[bool](t, db.dsn, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, db.slot); i++ {
		if i > 600 { // a guard against hanging, not a timing assertion
			t.Fatal("slot still held after its holder was terminated")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := db.pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, db.slot); err != nil {
		t.Fatal(err)
	}
	setup(1, "replication slot "+db.slot+" does not exist (walhook setup creates it; see docs/operations.md, recovering from a gap)", "--skip-to", end.String())
	// A new slot starts past the cursor: a gap, which --accept-gap settles.
	if _, err := db.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, db.slot); err != nil {
		t.Fatal(err)
	}
	setup(1, "the store's cursor for slot "+db.slot+" is at "+cursor.String()+", behind the slot's confirmed position", "--skip-to", end.String())
	setup(1, "— fix: walhook setup --accept-gap first; nothing was skipped", "--skip-to", end.String())

	if got := db.cursor(t); got != cursor {
		t.Errorf("cursor %s after refused skips, want it unchanged at %s", got, cursor)
	}
}
