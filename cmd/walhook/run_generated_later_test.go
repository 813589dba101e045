package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A column a rule reads made a generated one while walhook runs (dropped
// and added back GENERATED ALWAYS AS … STORED): PostgreSQL 15 does not
// send it, so the next change stops the run, which said the column "does
// not exist" while the DBA sees it in the table. The periodic check, the
// stop and a restart now all say it is generated and not sent.
func TestRunColumnMadeGeneratedWhileRunning(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE lots (id int PRIMARY KEY, price numeric NOT NULL, total numeric);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: lot.created
    table: public.lots
    operations: [insert]
    data: [id, total]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO lots VALUES (1, 10, 20)`)
	runWaitFor(t, 30*time.Second, "lot 1", func() bool { return rc.Unique() == 1 }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]

	db.exec(t, `ALTER TABLE lots DROP COLUMN total, ADD COLUMN total numeric GENERATED ALWAYS AS (price * 2) STORED`)
	problems := regexp.MustCompile(`(?m)^walhook_rule_table_problems 1$`)
	runWaitFor(t, 3*publicationPoll, "the periodic check's warning", func() bool { return problems.MatchString(runMetrics(t, base)) }, p.diag)
	const want = `column "total" of public.lots is a generated column, which logical replication (PostgreSQL 15) does not send`
	if !strings.Contains(p.stderr.String(), `of public.lots is a generated column, which logical replication (PostgreSQL 15) does not send`) {
		t.Errorf("the periodic check's log does not say the column is generated")
	}
	db.exec(t, `INSERT INTO lots (id, price) VALUES (2, 10)`)
	runWaitFor(t, 30*time.Second, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	if err, _ := p.exited(); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "walhook.yaml:10:") {
		t.Fatalf("run ended with %v, want the generated column named at its rule's data line", err)
	}
	_, errOut, code := runCLI(t, context.Background(), "run", "--config", file)
	if code == 0 || !strings.Contains(errOut, want) {
		t.Fatalf("restart: exit %d, want a refusal naming the generated column\n%s", code, errOut)
	}
}
