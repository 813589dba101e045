package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// ALTER TABLE … SET SCHEMA of a rule table while walhook runs is a
// rename: the table stays in the publication (by OID) and its next change
// arrives under the new name, which stops the run there, unconfirmed.
// With the new name in the rules (and setup), the restart delivers that
// change: nothing is lost.
func TestRunRuleTableMovedToAnotherSchema(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "item 1", func() bool { return rc.Unique() == 1 }, p.diag)
	db.exec(t, `CREATE SCHEMA app; ALTER TABLE items SET SCHEMA app`)
	db.exec(t, `INSERT INTO app.items (id) VALUES (2)`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "public.items") || !strings.Contains(err.Error(), "app.items") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 naming the old and the new name", err, ExitCode(err))
	}

	b, rerr := os.ReadFile(file)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(string(b), "public.items", "app.items")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := pubCLI(t, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	p = startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "item 2", func() bool { return rc.Unique() == 2 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
