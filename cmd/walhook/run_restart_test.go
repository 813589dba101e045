package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// The servers around a running walhook restart: the store (its own
// cluster) is stopped for a few seconds while the source keeps writing,
// then the source crashes (immediate shutdown, crash recovery on start).
// walhook run rides out both without exiting and delivers every change
// written before, during and after them.
func TestRunRidesOutStoreAndSourceRestarts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src, store := pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_restart"}
	if _, err := db.pool.Exec(ctx, runItemsSchema); err != nil {
		t.Fatalf("load schema: %v", err)
	}
	rc := newRunReceiver(t, runSecret, nil)
	file, cfg := storeRunConfig(t, db, store, rc)
	db.setup(t, cfg) // publication, slot (and a store on the source, unused)
	migrateStore(t, store)

	p := startRunProc(t, "--config", file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	// has waits for n deliveries, or for the run to exit (alive reports it).
	has := func(n int) func() bool {
		return func() bool { _, exited := p.exited(); return exited || rc.Unique() == n }
	}
	insertItems(t, db, 1, 100)
	runWaitFor(t, 30*time.Second, "100 deliveries", has(100), alive)
	alive()

	// The store goes away while the source keeps committing.
	if err := store.Stop(); err != nil {
		t.Fatalf("stop the store: %v", err)
	}
	for i := 101; i <= 200; i += 10 {
		insertItems(t, db, i, i+9)
		time.Sleep(200 * time.Millisecond)
	}
	alive()
	if err := store.StartAgain(); err != nil {
		t.Fatalf("start the store again: %v", err)
	}
	runWaitFor(t, 90*time.Second, "200 deliveries after the store came back", has(200), alive)
	alive()

	// The source crashes and recovers.
	if err := src.Crash(); err != nil {
		t.Fatalf("crash the source: %v", err)
	}
	time.Sleep(time.Second)
	alive()
	if err := src.StartAgain(); err != nil {
		t.Fatalf("start the source again: %v", err)
	}
	insertItems(t, db, 201, 300)
	runWaitFor(t, 90*time.Second, "300 deliveries after the source came back", has(300), alive)
	alive()
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("walhook run stderr (warnings and errors):\n%s", warnLines(p.stderr.String()))
	if n := db.count(t, `SELECT count(*) FROM walhook.events`); n != 0 {
		t.Fatalf("%d events in the source's store schema, want them all in the store's", n)
	}
}

func warnLines(log string) string {
	var b strings.Builder
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
