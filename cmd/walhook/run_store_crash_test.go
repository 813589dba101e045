package main

import (
	"context"
	"sync"
	"testing"
	"time"
)

// The store (a cluster of its own) crashes (immediate shutdown, crash
// recovery on start) while walhook drains a stream of changes into it and
// delivers them: walhook rides it out without exiting, every change is
// delivered, and the slot is never confirmed past the cursor the store
// kept through the crash.
func TestRunRidesOutAStoreCrashMidDrain(t *testing.T) {
	t.Parallel()
	db, _, store, rc, file := twoClusterItems(t, "wh_storecrash")
	p := startRunProc(t, "--config", file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", func() bool { return rc.Unique() == 50 }, alive)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 51; i <= 400; i += 10 {
			insertItems(t, db, i, i+9)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	runWaitFor(t, 30*time.Second, "the drain to be under way", func() bool { return rc.Unique() >= 100 }, alive)
	if err := store.Crash(); err != nil {
		t.Fatalf("crash the store: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	alive()
	if err := store.StartAgain(); err != nil {
		t.Fatalf("start the store again: %v", err)
	}
	// The slot (read first) is never past the store's cursor (read
	// after): the cursor only grows.
	spool := testPool(t, store.DSN("postgres"))
	var slotLSN, cursor string
	if err := db.pool.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'wh_storecrash'`).Scan(&slotLSN); err != nil {
		t.Fatal(err)
	}
	if err := spool.QueryRow(context.Background(), `SELECT lsn::text FROM walhook.cursor WHERE slot = 'wh_storecrash'`).Scan(&cursor); err != nil {
		t.Fatal(err)
	}
	if n := db.count(t, `SELECT count(*) WHERE $1::pg_lsn > $2::pg_lsn`, slotLSN, cursor); n != 0 {
		t.Errorf("the slot was confirmed to %s, past the cursor the store kept through its crash, %s", slotLSN, cursor)
	}
	wg.Wait()
	runWaitFor(t, 60*time.Second, "400 deliveries after the store's crash", func() bool { return rc.Unique() == 400 }, alive)
	alive()
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("duplicates %d; walhook run stderr (warnings and errors):\n%s", rc.Duplicates(), warnLines(p.stderr.String()))
}
