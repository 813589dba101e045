package main

import (
	"context"
	"strings"
	"testing"
)

// An UNLOGGED table writes no WAL, so logical replication never sees its
// changes and PostgreSQL refuses to publish it. check fails the table with
// the fix (it passed it, then sent the operator to a setup that failed
// with PostgreSQL's bare "cannot add relation … to publication"), and
// setup refuses before changing anything, saying why.
func TestCheckRefusesAnUnloggedRuleTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newRunDB(t, `CREATE UNLOGGED TABLE sessions (id int PRIMARY KEY, user_id int);`)
	file, _ := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: session.started
    table: public.sessions
    operations: [insert]
`), db.settings())
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckNoLines(t, out, `ok    table public.sessions`, `not ready: run walhook setup`)
	ckWantLines(t, out, `FAIL  .*public.sessions.*(unlogged|UNLOGGED)`)

	out, errOut, code = runCLI(t, ctx, "setup", "--config", file)
	if code != 1 || !strings.Contains(out+errOut, "public.sessions is UNLOGGED: it writes no WAL") ||
		!strings.Contains(out+errOut, "nothing changed") || !strings.Contains(out+errOut, "fix: ALTER TABLE public.sessions SET LOGGED;") {
		t.Errorf("setup: exit %d, want 1 with a message that says the table is unlogged\n%s%s", code, out, errOut)
	}
}
