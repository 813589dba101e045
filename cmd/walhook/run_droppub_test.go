package main

import (
	"strings"
	"testing"
	"time"
)

// The publication dropped and created again while walhook runs. In one
// transaction nothing is missed. In two, PostgreSQL 15 decodes each
// change with the catalog of its time, so the first change written while
// the publication was missing fails decoding with "publication does not
// exist", on every restart, even once it exists again (and check sees
// nothing wrong). run stopped with that bare message; it now says why and
// that teardown and setup --accept-gap get past it, and that does.
func TestRunPublicationDroppedAndCreatedAgain(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "item 1", func() bool { return rc.Unique() == 1 }, p.diag)
	db.exec(t, `BEGIN; DROP PUBLICATION walhook; CREATE PUBLICATION walhook FOR TABLE items WITH (publish_via_partition_root = true); COMMIT`)
	insertItems(t, db, 2, 2)
	runWaitFor(t, 30*time.Second, "item 2", func() bool { return rc.Unique() == 2 }, p.diag)

	db.exec(t, `DROP PUBLICATION walhook`)
	insertItems(t, db, 3, 3)
	db.exec(t, `CREATE PUBLICATION walhook FOR TABLE items WITH (publish_via_partition_root = true)`)
	insertItems(t, db, 4, 4)
	runWaitFor(t, 30*time.Second, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	const why = "the publication did not exist when that change was written"
	const fix = "fix: walhook teardown && walhook setup --accept-gap"
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), fix) {
		t.Fatalf("run ended with %v (exit %d), want exit 1 saying why and the fix", err, ExitCode(err))
	}
	t.Logf("run: %v", err)
	if out, _, code := pubCLI(t, "check", "--config", file); code != 0 {
		t.Fatalf("check: exit %d, want 0 (the publication exists again)\n%s", code, out)
	}
	p = startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "run to stop again", func() bool { _, done := p.exited(); return done }, p.diag)
	if err, _ := p.exited(); err == nil || !strings.Contains(err.Error(), why) {
		t.Fatalf("restart ended with %v, want the same stop", err)
	}

	if out, errOut, code := pubCLI(t, "teardown", "--config", file); code != 0 {
		t.Fatalf("teardown: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := pubCLI(t, "setup", "--config", file, "--accept-gap"); code != 0 {
		t.Fatalf("setup --accept-gap: exit %d\n%s%s", code, out, errOut)
	}
	p = startRunProc(t, "--config", file)
	insertItems(t, db, 5, 5)
	runWaitFor(t, 30*time.Second, "item 5", func() bool { return rc.Unique() == 3 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
