package main

import (
	"context"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// The source restarts under a running walhook whose store is inside it
// (no store.dsn, the default): a fast shutdown and start, as a
// minor-version update does, then an immediate shutdown (crash recovery).
// The shutdown does not wait on walhook, run rides out both without
// exiting, and every change written before and after arrives once.
func TestRunRidesOutSourceRestartsWithTheStoreInside(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := pgtest.StartT(t, pgtest.Options{})
	if err := src.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_srcrestart"}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, _ := runConfig(t, []byte(runItemsConfig), s)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	p := startRunProc(t, "--config", file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	has := func(n int) func() bool {
		return func() bool { _, exited := p.exited(); return exited || rc.Unique() == n }
	}
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", has(50), alive)

	start := time.Now()
	if err := src.Restart(); err != nil { // fails after 60 s of a shutdown that hangs
		t.Fatalf("fast restart: %v", err)
	}
	t.Logf("fast restart took %s", time.Since(start))
	insertItems(t, db, 51, 100)
	runWaitFor(t, 60*time.Second, "100 deliveries after the fast restart", has(100), alive)

	if err := src.Crash(); err != nil {
		t.Fatalf("crash: %v", err)
	}
	if err := src.StartAgain(); err != nil {
		t.Fatalf("start after the crash: %v", err)
	}
	insertItems(t, db, 101, 150)
	runWaitFor(t, 60*time.Second, "150 deliveries after the crash", has(150), alive)
	alive()
	wantItemsOnce(t, rc, "r", 1, 150)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
