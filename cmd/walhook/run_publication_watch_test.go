package main

import (
	"strings"
	"testing"
	"time"
)

// A row filter and a column list put on a rule table while walhook runs:
// the leader's publication watch checks as run's startup does, and run
// stops within publicationPoll with the same lines and fix.
func TestRunStopsWhenThePublicationGainsAFilter(t *testing.T) {
	t.Parallel()
	db, file, p := runDeliveringItems(t)
	db.exec(t, `ALTER PUBLICATION walhook SET TABLE items (id, n) WHERE (id > 100)`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 ||
		!strings.Contains(err.Error(), "the publication changed while walhook ran: it no longer sends the rule tables' changes as the rules need them") ||
		!strings.Contains(err.Error(), "publication walhook publishes public.items with a row filter WHERE (id > 100)") ||
		!strings.Contains(err.Error(), "and a column list (id, n)") || !strings.HasSuffix(err.Error(), "— fix: walhook setup") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 and the filter and column list with their fix", err, ExitCode(err))
	}
	// The same lines refuse a new start.
	_, errOut, code := pubCLI(t, "run", "--config", file)
	if code == 0 || !strings.Contains(errOut, "publication walhook publishes public.items with a row filter WHERE (id > 100)") {
		t.Fatalf("restart: exit %d, want the same refusal", code)
	}
}

// publish_via_partition_root turned off while walhook runs on a
// partitioned rule table: its partitions' changes would arrive under
// their own names, which no rule names, so run stops.
func TestRunStopsWhenThePublicationStopsPublishingViaRoot(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, pubBidSchema)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(pubBidConfig), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO bid (id, lot, amount) VALUES (1, 1, 10)`)
	runWaitFor(t, 30*time.Second, "the first delivery", func() bool { return rc.Unique() == 1 }, p.diag)
	db.exec(t, `ALTER PUBLICATION walhook SET (publish_via_partition_root = false)`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 ||
		!strings.Contains(err.Error(), "publication walhook does not publish public.bid under its name: it is partitioned and publish_via_partition_root is off") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 and publish_via_partition_root named", err, ExitCode(err))
	}
}

// The publication stops publishing an operation the rules map (ALTER
// PUBLICATION … SET (publish = …)): PostgreSQL then sends no change of
// that kind, not even an error, so the rule goes quiet. run stops as for
// the other publication changes, and refuses to start on it (check
// reported it already; run started).
func TestRunStopsWhenThePublicationStopsPublishingAnOperation(t *testing.T) {
	t.Parallel()
	db, file, p := runDeliveringItems(t)
	db.exec(t, `ALTER PUBLICATION walhook SET (publish = 'update, delete')`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	const want = "publication walhook does not publish insert, which the rules map"
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "the publication changed while walhook ran") ||
		!strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), "ALTER PUBLICATION walhook SET (publish = 'insert, update, delete, truncate');") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 and the operation with its fix", err, ExitCode(err))
	}
	_, errOut, code := pubCLI(t, "run", "--config", file)
	if code == 0 || !strings.Contains(errOut, want) {
		t.Fatalf("restart: exit %d, want the same refusal", code)
	}
	// The publication is walhook's: setup sets the option back.
	out, errOut, code := pubCLI(t, "setup", "--config", file)
	if code != 0 || !strings.Contains(out, "set publish = 'insert, update, delete, truncate' on publication walhook (it did not publish insert)") {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := pubCLI(t, "check", "--config", file); strings.Contains(out, "does not publish") {
		t.Fatalf("check after setup: exit %d\n%s%s", code, out, errOut)
	}
}

// runDeliveringItems starts walhook run on the items table with one
// endpoint and waits until the first two changes are delivered: a run
// that works, before a test changes something under it.
func runDeliveringItems(t *testing.T) (*runDB, string, *runProc) {
	t.Helper()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 2)
	runWaitFor(t, 30*time.Second, "the first deliveries", func() bool { return rc.Unique() == 2 }, p.diag)
	return db, file, p
}
