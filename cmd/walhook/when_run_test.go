package main

import (
	"strings"
	"testing"
	"time"
)

// oneTableRun starts walhook run on a database made by schema, with the
// rules of events (a YAML list under `events:`) delivering to a verifying
// receiver.
func oneTableRun(t *testing.T, schema, events string) (*runDB, *runReceiver, *runProc) {
	t.Helper()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, schema)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte("source:\n  dsn: set-by-test\nevents:\n"+events), s)
	db.setup(t, cfg)
	return db, rc, startRunProc(t, "--config", file)
}

// whenRule is one insert rule on table with when (data: the id).
func whenRule(table, when string) string {
	return `  - event: row.matched
    table: ` + table + `
    operations: [insert]
    when: '` + strings.ReplaceAll(when, "'", "''") + `'
    data: [id]
`
}

// waitDelivered waits until the receiver holds n deliveries, and fails
// the test if walhook run stopped instead (at data it should map).
func waitDelivered(t *testing.T, p *runProc, rc *runReceiver, n int, what string) {
	t.Helper()
	runWaitFor(t, 30*time.Second, what, func() bool {
		if _, stopped := p.exited(); stopped {
			return true
		}
		return rc.Unique() == n
	}, p.diag)
	if err, stopped := p.exited(); stopped {
		t.Fatalf("walhook run stopped at valid data (waiting for %s): %v", what, err)
	}
}
