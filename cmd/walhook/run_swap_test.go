package main

import (
	"strings"
	"testing"
	"time"
)

// A table swapped for a copy while walhook runs (what pg_repack-like
// tools and hand-made rebuilds do: create a copy, rename the original
// away, rename the copy into its place). The copy is a new table, not in
// the publication: its changes are never sent. Added to the publication
// in the swap's transaction after its rows are copied, it streams on
// under the rules' name with no event for the copied rows; swapped
// without that, run stops within publicationPoll naming the table and
// walhook setup, and setup plus a restart deliver the changes from then.
func TestRunTableSwappedForACopy(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 2)
	runWaitFor(t, 30*time.Second, "the first deliveries", func() bool { return rc.Unique() == 2 }, p.diag)

	db.exec(t, `BEGIN;
		CREATE TABLE items_new (LIKE items INCLUDING ALL);
		INSERT INTO items_new SELECT * FROM items;
		ALTER PUBLICATION walhook ADD TABLE items_new;
		ALTER TABLE items RENAME TO items_old;
		ALTER TABLE items_new RENAME TO items;
		COMMIT;
		DROP TABLE items_old`)
	insertItems(t, db, 3, 3)
	runWaitFor(t, 30*time.Second, "item 3 from the copy", func() bool { return rc.Unique() == 3 }, p.diag)
	time.Sleep(publicationPoll + time.Second) // one publication check
	if err, done := p.exited(); done {
		t.Fatalf("run stopped after a swap that kept the publication: %v", err)
	}

	db.exec(t, `BEGIN;
		CREATE TABLE items_new (LIKE items INCLUDING ALL);
		INSERT INTO items_new SELECT * FROM items;
		ALTER TABLE items RENAME TO items_old;
		ALTER TABLE items_new RENAME TO items;
		COMMIT;
		DROP TABLE items_old`)
	insertItems(t, db, 4, 4)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "publication walhook does not publish public.items any more") ||
		!strings.Contains(err.Error(), "run walhook setup") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 naming public.items and walhook setup", err, ExitCode(err))
	}
	if out, errOut, code := pubCLI(t, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	p = startRunProc(t, "--config", file)
	insertItems(t, db, 5, 5)
	runWaitFor(t, 30*time.Second, "item 5", func() bool { return rc.Unique() == 4 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
