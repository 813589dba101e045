package main

import (
	"context"
	"strings"
	"testing"
)

// An UNLOGGED table writes no WAL, so logical replication never sees its
// changes and PostgreSQL refuses to publish it. PRODUCT.md: "walhook check
// lists every missing prerequisite with the fix". Today check passes the
// table ("ok table public.sessions: readable, …") and ends with "not
// ready: run walhook setup", and setup then fails with PostgreSQL's bare
// "cannot add relation "sessions" to publication" (its DETAIL, "This
// operation is not supported for unlogged tables.", is dropped), after it
// has created the store schema. check should fail the table and say why
// (unlogged: ALTER TABLE … SET LOGGED, or map another table).
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
	if code != 1 || !strings.Contains(out+errOut, "unlogged") {
		t.Errorf("setup: exit %d, want 1 with a message that says the table is unlogged\n%s%s", code, out, errOut)
	}
}
