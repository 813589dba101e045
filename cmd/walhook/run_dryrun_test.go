package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// A dry run stays attached to the slot for as long as someone leaves it
// running, and it confirms nothing. A fast shutdown of the source (pg_ctl
// stop -m fast, a restart) waits for the walsender, which exits only once
// its client has everything it sent; a client that answers every
// keepalive but reports nothing written kept it (and with it the
// postmaster, refusing connections) waiting for as long as the dry run
// ran. The dry run reports as written what it received, with no flush
// position, so the slot still does not move. pgcluster gives up on a
// shutdown after 60 s and says so.
func TestRunDryRunLetsTheSourceShutDown(t *testing.T) {
	t.Parallel()
	src := pgtest.StartT(t, pgtest.Options{})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_dry_shutdown"}
	if _, err := db.pool.Exec(context.Background(), runItemsSchema); err != nil {
		t.Fatal(err)
	}
	file, cfg := runConfig(t, []byte(runItemsConfig), db.settings())
	db.setup(t, cfg)
	before := db.slotLSN(t)
	p := startRunProc(t, "--config", file, "--dry-run")
	lines := func(n int) func() bool {
		return func() bool { return strings.Count(p.stdout.String(), "\n") >= n }
	}
	insertItems(t, db, 1, 3)
	runWaitFor(t, 30*time.Second, "3 JSON lines", lines(3), p.diag)

	db.pool.Reset() // its sessions end with the server
	if err := src.Stop(); err != nil {
		t.Fatalf("fast shutdown of the source: %v", err)
	}
	if err := src.StartAgain(); err != nil {
		t.Fatal(err)
	}
	insertItems(t, db, 4, 4)
	runWaitFor(t, 60*time.Second, "the 4th line, after the restart", lines(4), p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("dry run stop: %v", err)
	}
	if n := strings.Count(p.stdout.String(), "\n"); n != 4 {
		t.Errorf("%d lines, want 4:\n%s", n, p.stdout.String())
	}
	if after := db.slotLSN(t); after != before {
		t.Errorf("dry run moved the slot from %s to %s", before, after)
	}
}
