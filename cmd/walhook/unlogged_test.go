package main

import (
	"context"
	"strings"
	"testing"
	"time"
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

// PostgreSQL refuses ALTER TABLE … SET UNLOGGED on a published table, but
// not on a partition of a partitioned table published via the root, nor
// CREATE UNLOGGED TABLE … PARTITION OF it: the partition's changes then
// write no WAL and never arrive, with no error anywhere. check fails the
// partitioned table naming the partition and the fix, run refuses to
// start, and a running walhook stops within publicationPoll of the
// partition being set UNLOGGED (all of them passed it silently).
func TestUnloggedPartitionIsRefusedAndStopsTheRun(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, pubBidSchema)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(pubBidConfig), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO bid (id, lot, amount) VALUES (1, 1, 10), (2, 2, 10)`)
	runWaitFor(t, 30*time.Second, "the first deliveries", func() bool { return rc.Unique() == 2 }, p.diag)

	db.exec(t, `ALTER TABLE bid_1 SET UNLOGGED`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	const want = "partition public.bid_1 of public.bid is UNLOGGED: it writes no WAL, so logical replication never sees its changes"
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), "fix: ALTER TABLE public.bid_1 SET LOGGED;") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 naming the unlogged partition and its fix", err, ExitCode(err))
	}

	db.exec(t, `CREATE UNLOGGED TABLE bid_x (LIKE bid)`)
	db.exec(t, `ALTER TABLE bid DETACH PARTITION bid_0`)
	db.exec(t, `ALTER TABLE bid ATTACH PARTITION bid_x FOR VALUES WITH (MODULUS 2, REMAINDER 0)`)
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check: exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  table public\.bid: partitions public\.bid_1, public\.bid_x are UNLOGGED: .* — fix: ALTER TABLE public\.bid_1 SET LOGGED; ALTER TABLE public\.bid_x SET LOGGED;`)
	_, errOut, code := pubCLI(t, "run", "--config", file)
	if code == 0 || !strings.Contains(errOut, "partition public.bid_x of public.bid is UNLOGGED") {
		t.Fatalf("run: exit %d, want a refusal naming the unlogged partitions", code)
	}

	out, errOut, code = pubCLI(t, "setup", "--config", file)
	if code != 1 || !strings.Contains(out+errOut, "nothing changed") ||
		!strings.Contains(out+errOut, "partition public.bid_x of public.bid is UNLOGGED: it writes no WAL, so logical replication never sees its changes — fix: ALTER TABLE public.bid_x SET LOGGED;") {
		t.Fatalf("setup: exit %d, want 1 naming the unlogged partitions and changing nothing", code)
	}

	db.exec(t, `ALTER TABLE bid_1 SET LOGGED; ALTER TABLE bid_x SET LOGGED`)
	if out, _, code := pubCLI(t, "check", "--config", file); code != 0 {
		t.Fatalf("check after SET LOGGED: exit %d\n%s", code, out)
	}
}

// A publication FOR TABLES IN SCHEMA (one the DBA made) does not stop
// ALTER TABLE … SET UNLOGGED of a rule table, as a FOR TABLE one does:
// the table then silently leaves the publication. The running walhook
// stops saying it is UNLOGGED, with the fix, rather than only that the
// publication no longer publishes it.
func TestRunStopsWhenARuleTableIsSetUnlogged(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, runItemsSchema+`CREATE PUBLICATION walhook FOR TABLES IN SCHEMA public`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "item 1", func() bool { return rc.Unique() == 1 }, p.diag)
	db.exec(t, `ALTER TABLE items SET UNLOGGED`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "public.items is UNLOGGED: it writes no WAL") ||
		!strings.Contains(err.Error(), "fix: ALTER TABLE public.items SET LOGGED;") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 naming the unlogged table and its fix", err, ExitCode(err))
	}
}

// A foreign table attached as a partition of a rule table (postgres_fdw
// sharding, an archive server; possible where the partitioned table has
// no unique index): the rows routed to it are written on the other
// server, and none of their changes reaches this WAL. check warns, naming
// it (it passed it silently); it may be meant, so nothing refuses.
func TestCheckWarnsOfAForeignPartition(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, `CREATE TABLE ev (id bigint NOT NULL, k int NOT NULL) PARTITION BY RANGE (k);
		CREATE TABLE ev_0 PARTITION OF ev FOR VALUES FROM (0) TO (10);
		ALTER TABLE ev REPLICA IDENTITY FULL; ALTER TABLE ev_0 REPLICA IDENTITY FULL;
		CREATE FOREIGN DATA WRAPPER fake_fdw; CREATE SERVER archive FOREIGN DATA WRAPPER fake_fdw;
		CREATE FOREIGN TABLE ev_archive PARTITION OF ev FOR VALUES FROM (-100) TO (0) SERVER archive;`)
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: ev.created
    table: public.ev
    operations: [insert]
`), db.settings())
	db.setup(t, cfg)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", file)
	if code != 0 {
		t.Fatalf("check: exit %d, want 0 (a warning)\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `^warn  table public\.ev: partitions public\.ev_archive are foreign tables: .*no change of them is in this server's WAL.* — fix: make them local partitions`)
}
