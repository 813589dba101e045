package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A table whose auction_id is a generated column (derived from a jsonb
// payload) has one, but PostgreSQL 15 never sends it, so the events of a
// rule without auction_id: carry auction_id null. That works (the column
// may hold nothing else) but is not what the rule's author expects, and
// an endpoint subscribed to that auction gets nothing: check warns with
// the rule's file:line, and run logs the same at startup (it was silent).
func TestGeneratedAuctionIDColumnIsNotSilentlyNull(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const auction = "a0000000-0000-4000-8000-000000000001"
	all := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE lots (id int PRIMARY KEY, payload jsonb,
		auction_id uuid GENERATED ALWAYS AS ((payload->>'auction')::uuid) STORED);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("all", all.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: lot.created
    table: public.lots
    operations: [insert]
    data: [id]
`), s)
	db.setup(t, cfg)

	const warning = `event lot.created: column "auction_id" of public.lots is a generated column, which logical replication (PostgreSQL 15) does not send, so the events' auction_id is null`
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check: exit %d, want 0 (a warning)\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `warn  rule: .*walhook\.yaml:7:7: events\[0\]: `+regexp.QuoteMeta(warning)+`.*name a column that holds the auction id with auction_id:$`)

	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO lots (id, payload) VALUES (1, $1)`, `{"auction": "`+auction+`"}`)
	runWaitFor(t, 30*time.Second, "the event", func() bool { return all.Unique() == 1 }, p.diag)
	if got := runBody(t, all.deliveries()[0].Body)["auction_id"]; got != nil {
		t.Errorf("envelope auction_id = %v, want null (the column is not sent)", got)
	}
	if !strings.Contains(p.stderr.String(), `of public.lots is a generated column, which logical replication (PostgreSQL 15) does not send, so the events' auction_id is null`) {
		t.Error("run did not log the warning at startup")
	}
}
