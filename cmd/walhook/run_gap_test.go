package main

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/mapper"
)

// The documented recovery from a lost slot (or a failover): teardown,
// setup, and accept the gap. The changes made while there was no slot are
// lost; setup says so and refuses until the gap is accepted, check fails
// on it, run refuses it with the same fix, and after setup --accept-gap
// run starts and delivers what comes after.
func TestRunRecoversFromALostSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	runItemsUntil(t, db, file, rc, 1, 5, 5, "the first 5 deliveries")
	cursor := db.slotLSN(t) // once the walsender has let go

	// The slot is lost (dropped here); changes made meanwhile are gone.
	if out, errOut, code := runCLI(t, ctx, "teardown", "--config", file); code != 0 {
		t.Fatalf("teardown exit %d:\n%s%s", code, out, errOut)
	}
	insertItems(t, db, 6, 10)

	out, errOut, code := runCLI(t, ctx, "setup", "--config", file)
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("setup with a gap: exit %d, want 1", code)
	}
	ckWantLines(t, out, `created replication slot `+db.slot)
	ckWantLines(t, errOut, `setup: the store's cursor for slot `+db.slot+` is at `+cursor.String()+`, behind the slot's confirmed position \S+ \(a slot created again after it was lost or dropped, .*\): the changes in between can no longer be read, so walhook run refuses to start — fix: walhook setup --accept-gap, which moves the cursor to \S+ \(backfill`)
	if got := db.cursor(t); got != cursor {
		t.Fatalf("cursor %s after a refused setup, want it unchanged at %s", got, cursor)
	}

	out, errOut, code = runCLI(t, ctx, "check", "--config", file)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("check with a gap: exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  cursor: the store's cursor for slot `+db.slot+` is at `+cursor.String()+`, behind .* — fix: walhook setup --accept-gap`)

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, errOut, code = runCLI(t, rctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "to accept the gap, run walhook setup --accept-gap") {
		t.Fatalf("run with a gap: exit %d, want 1 with the fix; stderr:\n%s", code, runTail(errOut, 3000))
	}

	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--accept-gap")
	t.Logf("setup --accept-gap:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("setup --accept-gap: exit %d", code)
	}
	slot := db.slotLSN(t)
	ckWantLines(t, out, `accepted a gap: the store's cursor for slot `+db.slot+` moved from `+cursor.String()+` to `+slot.String()+`; changes committed in between became no events`)
	if got := db.cursor(t); got != slot {
		t.Fatalf("cursor %s after --accept-gap, want the slot's %s", got, slot)
	}
	// A gap forward keeps the ids as they were: no position repeats.
	if n := db.count(t, `SELECT id_epoch FROM walhook.cursor WHERE slot = $1`, db.slot); n != 0 {
		t.Fatalf("id_epoch %d after accepting a gap forward, want 0", n)
	}
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check after --accept-gap: exit %d\n%s%s", code, out, errOut)
	}
	// Once there is no gap, --accept-gap changes nothing.
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file, "--accept-gap"); code != 0 || strings.Contains(out, "accepted") {
		t.Fatalf("setup --accept-gap without a gap: exit %d\n%s%s", code, out, errOut)
	}

	p := startRunProc(t, "--config", file)
	insertItems(t, db, 11, 15)
	runWaitFor(t, 30*time.Second, "the 5 deliveries after the gap", func() bool { return rc.Unique() == 10 }, p.diag)
	if n := db.count(t, `SELECT count(*) FROM walhook.events WHERE (data->>'id')::int BETWEEN 6 AND 10`); n != 0 {
		t.Errorf("%d events for changes made while there was no slot", n)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// A standby that takes the slot over while the old leader's stream is
// still storing and confirming (the old leader's lock session was cut:
// an admin, a store restart, a network reset) starts from what the old
// leader stored, not from the cursor it read when it won the lock: no
// false "events were lost", nothing lost, both processes keep running.
func TestRunTakeoverWhileTheOldLeaderStillConfirms(t *testing.T) {
	t.Parallel()
	rc, db, a, b := startLeaderAndStandby(t)

	// A steady stream of changes, so A is confirming when it loses the lock.
	var stop atomic.Bool
	written := make(chan int, 1)
	go func() {
		id := 1
		for !stop.Load() {
			if _, err := db.pool.Exec(context.Background(),
				`INSERT INTO items (id, auction_id) SELECT g, 'auc' FROM generate_series($1::int, $2::int) g`, id, id+4); err != nil {
				break
			}
			id += 5
			time.Sleep(5 * time.Millisecond)
		}
		written <- id - 1
	}()
	defer stop.Store(true)
	runWaitFor(t, 30*time.Second, "A to deliver", func() bool { return rc.Unique() >= 100 }, a.diag)
	// Cut the session that holds the leader lock (in this test's
	// database) until B wins it: A, waiting again, may win it back first.
	leads := func(p *runProc) int { return strings.Count(p.stderr.String(), "this process holds the slot") }
	for try := 1; leads(b) == 0; try++ {
		if try > 20 {
			t.Fatalf("B never won the lock in 20 tries\nA: %s\nB: %s", a.diag(), b.diag())
		}
		before := leads(a)
		db.count(t, `WITH p AS MATERIALIZED (
				SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
				AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
			SELECT count(*) FROM p WHERE pg_terminate_backend(p.pid)`)
		runWaitFor(t, 30*time.Second, "a new leader", func() bool { return leads(b) > 0 || leads(a) > before }, b.diag)
		for name, p := range map[string]*runProc{"A": a, "B": b} {
			if err, exited := p.exited(); exited {
				t.Fatalf("%s exited: %v\n%s", name, err, p.diag())
			}
		}
	}
	time.Sleep(500 * time.Millisecond) // B streams a while; not a timing assertion
	stop.Store(true)
	n := <-written
	runWaitFor(t, 60*time.Second, "every change delivered", func() bool { return rc.Unique() == n }, b.diag)
	for name, p := range map[string]*runProc{"A": a, "B": b} {
		if err, exited := p.exited(); exited {
			t.Errorf("%s exited: %v\n%s", name, err, p.diag())
		}
	}
	if err := b.stop(t); err != nil {
		t.Errorf("stop B: %v", err)
	}
	if err := a.stop(t); err != nil {
		t.Errorf("stop A: %v", err)
	}
}

// A store cursor past the server's WAL end (a failover to a standby that
// was behind the old primary, or a point-in-time restore of the source)
// would make run skip every change the server writes up to it: run,
// check and setup refuse it until setup --accept-gap moves it back to
// the slot.
func TestRunRefusesACursorAheadOfTheServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	runItemsUntil(t, db, file, rc, 1, 3, 3, "the first 3 deliveries")
	slot := db.slotLSN(t)
	// The old primary's cursor, far past what this server has written.
	db.exec(t, `UPDATE walhook.cursor SET lsn = 'FF/0'`)

	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, errOut, code := runCLI(t, rctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "store cursor is ahead of the server's WAL: cursor FF/0 > WAL end") ||
		!strings.Contains(errOut, "run walhook setup --accept-gap") {
		t.Fatalf("run with a cursor ahead: exit %d, want 1 with the fix; stderr:\n%s", code, runTail(errOut, 3000))
	}
	// On PostgreSQL 15 the new primary has no slot: check sees the fork
	// all the same.
	if out, errOut, code := runCLI(t, ctx, "teardown", "--config", file); code != 0 {
		t.Fatalf("teardown: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `FAIL  slot `+db.slot+`: does not exist`,
		`FAIL  cursor: the store's cursor for slot `+db.slot+` is at FF/0 and was found past the server's WAL end \S+: the store followed another history .* — fix: walhook setup --accept-gap`)
	_, errOut, code = runCLI(t, ctx, "setup", "--config", file)
	if code != 1 || !strings.Contains(errOut, "was found past the server's WAL end") {
		t.Fatalf("setup: exit %d, want 1 with the cursor error\n%s", code, errOut)
	}
	out, _, _ = runCLI(t, ctx, "check", "--config", file)
	ckWantLines(t, out, `FAIL  cursor: the store's cursor for slot `+db.slot+` is at FF/0 and was found past the server's WAL end`)
	slot = db.slotLSN(t) // created again by setup

	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--accept-gap")
	if code != 0 {
		t.Fatalf("setup --accept-gap: exit %d\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `accepted a fork: the store's cursor for slot `+db.slot+` moved back from FF/0 to `+slot.String()+`, the slot's position on this server`)
	if got := db.cursor(t); got != slot {
		t.Fatalf("cursor %s after --accept-gap, want the slot's %s", got, slot)
	}

	runItemsUntil(t, db, file, rc, 4, 6, 6, "the changes after the fork")
	// The new history reuses xids and positions of the old one: the events
	// after the fork carry the id epoch accepting it counted up, so none
	// can be taken for a replay of a stored one.
	if n := db.count(t, `SELECT id_epoch FROM walhook.cursor WHERE slot = $1`, db.slot); n != 1 {
		t.Fatalf("id_epoch %d after accepting a fork, want 1", n)
	}
	// This server was never promoted: the new history begins at the slot.
	if n := db.count(t, `SELECT count(*) FROM walhook.cursor WHERE slot = $1 AND id_epoch_from = $2::pg_lsn`, db.slot, slot.String()); n != 1 {
		t.Fatalf("id_epoch_from is not the slot's position %s", slot)
	}
	var sys string
	if err := db.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sys); err != nil {
		t.Fatal(err)
	}
	rows, err := db.pool.Query(ctx, `SELECT id, xid, commit_lsn::text, position, (data->>'id')::int FROM walhook.events ORDER BY 5`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var id, lsn string
		var xid int64
		var pos, item int
		if err := rows.Scan(&id, &xid, &lsn, &pos, &item); err != nil {
			t.Fatal(err)
		}
		commit, err := pglogrepl.ParseLSN(lsn)
		if err != nil {
			t.Fatal(err)
		}
		epoch := uint32(0)
		if item > 3 {
			epoch = 1
		}
		if want := mapper.EventID(sys, epoch, uint32(xid), commit, pos, 0); id != want {
			t.Errorf("event of item %d: id %s, want %s (epoch %d)", item, id, want, epoch)
		}
		n++
	}
	if err := rows.Err(); err != nil || n != 6 {
		t.Fatalf("%d events (%v), want 6", n, err)
	}
}

// A rule table taken out of the publication while walhook runs would go
// quiet (PostgreSQL sends nothing for it): the leader notices within
// publicationPoll and run stops with the fix.
func TestRunStopsWhenARuleTableLeavesThePublication(t *testing.T) {
	t.Parallel()
	db, _, p := runDeliveringItems(t)
	db.exec(t, `ALTER PUBLICATION walhook DROP TABLE items`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || !strings.Contains(err.Error(), "publication walhook does not publish public.items any more") || ExitCode(err) != 1 {
		t.Fatalf("run ended with %v (exit %d), want exit 1 and the publication error", err, ExitCode(err))
	}
}

// check and setup compare the cursor of a running walhook with the slot
// and the server's WAL end without seeing a gap or a fork that is not
// there, however busy the source.
func TestCursorGapWhileRunning(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	cfg, err := loadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "the first delivery", func() bool { return rc.Unique() == 1 }, p.diag)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for id := 2; !stop.Load(); id++ {
			if _, err := db.pool.Exec(context.Background(), `INSERT INTO items (id) VALUES ($1)`, id); err != nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer func() { stop.Store(true); <-done }()
	for i := range 100 {
		gap, err := readCursorGap(context.Background(), cfg)
		if err != nil || gap != nil {
			t.Fatalf("read %d with walhook running: gap %v, err %v", i, gap, err)
		}
	}
}

// A rule table renamed while walhook runs stops the run at its first
// change under the new name, even in a process that never saw a change
// of it before (it knows the table's OID from the startup check), and
// that change is not confirmed past.
func TestRunStopsAtAChangeToARenamedTable(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "run to hold the slot", func() bool {
		return strings.Contains(p.stderr.String(), "this process holds the slot")
	}, p.diag)
	db.exec(t, `ALTER TABLE items RENAME TO items_old`)
	db.exec(t, `INSERT INTO items_old (id) VALUES (1)`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || !strings.Contains(err.Error(), "table public.items was renamed to public.items_old") || ExitCode(err) != 1 {
		t.Fatalf("run ended with %v (exit %d), want exit 1 and the rename error", err, ExitCode(err))
	}
	var pending int
	if err := db.pool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.events`).Scan(&pending); err != nil || pending != 0 {
		t.Errorf("%d events stored (%v), want none: the change stops the run before it is stored", pending, err)
	}
	if rc.Unique() != 0 {
		t.Errorf("%d deliveries", rc.Unique())
	}
}

// A fork found once stays refused after the server's WAL has passed the
// old cursor (the positions alone no longer show it then), until setup
// --accept-gap.
func TestRunRemembersAFork(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	runItemsUntil(t, db, file, rc, 1, 2, 2, "the first deliveries")
	slot := db.slotLSN(t)
	// The old primary's cursor, a little past what this server has written.
	// (The shared cluster's other tests write WAL too: a wide margin.)
	db.exec(t, `UPDATE walhook.cursor SET lsn = pg_current_wal_lsn() + 64 * 1024 * 1024`)
	_, errOut, code := runCLI(t, ctx, "setup", "--config", file)
	if code != 1 || !strings.Contains(errOut, "was found past the server's WAL end") {
		t.Fatalf("setup: exit %d, want 1 with the fork\n%s", code, errOut)
	}
	// The new primary writes on, past the old cursor.
	db.exec(t, `INSERT INTO items (id) VALUES (100)`)
	for i := 0; db.count(t, `SELECT count(*) FROM walhook.cursor WHERE lsn < pg_current_wal_lsn()`) != 1; i++ {
		if i == 10 {
			t.Fatal("the server's WAL did not pass the old cursor")
		}
		// Each switch starts a new 16 MiB segment (after some WAL).
		db.exec(t, `SELECT pg_logical_emit_message(false, 'walhook-test', 'x')`)
		db.exec(t, `SELECT pg_switch_wal()`)
	}
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check after the WAL passed the cursor: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `FAIL  cursor: the store's cursor for slot `+db.slot+` is at \S+ and was found past the server's WAL end`)
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, errOut, code = runCLI(t, rctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "was found past the server's WAL end") || !strings.Contains(errOut, "setup --accept-gap") {
		t.Fatalf("run after the WAL passed the cursor: exit %d, want 1 with the fork\n%s", code, runTail(errOut, 2000))
	}
	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--accept-gap")
	if code != 0 {
		t.Fatalf("setup --accept-gap: exit %d\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `accepted a fork: the store's cursor for slot `+db.slot+` moved back from \S+ to `+slot.String())
	if out, errOut, code := runCLI(t, ctx, "check", "--config", file); code != 0 {
		t.Fatalf("check after --accept-gap: exit %d\n%s%s", code, out, errOut)
	}
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the change written after the fork", func() bool { return rc.Unique() == 3 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// runItemsUntil runs walhook with file, inserts items from..to, waits
// until rc holds want deliveries (what, in the timeout message) and stops
// the run.
func runItemsUntil(t *testing.T, db *runDB, file string, rc *runReceiver, from, to, want int, what string) {
	t.Helper()
	p := startRunProc(t, "--config", file)
	insertItems(t, db, from, to)
	runWaitFor(t, 30*time.Second, what, func() bool { return rc.Unique() == want }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
