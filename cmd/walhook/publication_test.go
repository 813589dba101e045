package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// A partitioned source table, one row per partition in the tests.
const pubBidSchema = `CREATE TABLE bid (id bigint, lot bigint NOT NULL, amount int NOT NULL DEFAULT 0, PRIMARY KEY (id, lot)) PARTITION BY HASH (lot);
	CREATE TABLE bid_0 PARTITION OF bid FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE bid_1 PARTITION OF bid FOR VALUES WITH (MODULUS 2, REMAINDER 1);`

const pubBidConfig = `
source:
  dsn: set-by-test
events:
  - event: bid.placed
    table: public.bid
    operations: [insert]
    data: [id, lot, amount]
`

// pubCLI runs a walhook command and logs its output.
func pubCLI(t *testing.T, args ...string) (out, errOut string, code int) {
	t.Helper()
	out, errOut, code = runCLI(t, context.Background(), args...)
	t.Logf("walhook %s: exit %d\n%s%s", args[0], code, out, errOut)
	return out, errOut, code
}

// The review's reproduction: a partitioned rule table and a publication
// made without publish_via_partition_root. check names the option, setup
// turns it on (and the second check is ready), and run delivers the
// changes of every partition under the partitioned table's name, which
// the rule names.
func TestPartitionedTableSetupCheckRun(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, pubBidSchema+`CREATE PUBLICATION walhook FOR TABLE bid`)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, _ := runConfig(t, []byte(pubBidConfig), s)

	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  publication walhook: does not publish public\.bid under its name: it is partitioned and publish_via_partition_root is off, .* — fix: walhook setup$`)

	out, _, code = pubCLI(t, "setup", "--config", file)
	if code != 0 {
		t.Fatalf("setup exit %d", code)
	}
	ckWantLines(t, out, `^set publish_via_partition_root = true on publication walhook$`, `^publication walhook already publishes public\.bid$`)
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check after setup exit %d", code)
	}
	ckWantLines(t, out, `ok    publication walhook: publishes the 1 rule tables$`, `ready: walhook run can start`)
	if out, _, _ = pubCLI(t, "setup", "--config", file); strings.Contains(out, "changed") || strings.Contains(out, "set publish") {
		t.Fatal("a second setup changed the publication again")
	}

	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO bid (id, lot, amount) VALUES (1, 1, 10), (2, 2, 20)`)
	runWaitFor(t, 30*time.Second, "a delivery per partition", func() bool { return rc.Unique() == 2 }, p.diag)
	lots := map[string]bool{}
	for _, d := range rc.deliveries() {
		data, _ := runBody(t, d.Body)["data"].(map[string]any)
		if d.Event != "bid.placed" {
			t.Errorf("event %q, want bid.placed", d.Event)
		}
		lots[fmt.Sprint(data["lot"])] = true
	}
	if !lots["1"] || !lots["2"] {
		t.Errorf("delivered lots %v, want 1 and 2 (one row in each partition)", lots)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// A rule on a partition of a table the publication publishes via its
// root never fires: the partition's changes arrive under the root's name.
// check says so; when the root is no rule's table setup publishes the
// partition alone instead, and when it is, the rules must move to it.
func TestPartitionRuleUnderPublishedRoot(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, pubBidSchema+`CREATE PUBLICATION walhook FOR TABLE bid WITH (publish_via_partition_root = true)`)
	s := db.settings()
	leaf, _ := runConfig(t, []byte(strings.Replace(pubBidConfig, "public.bid", "public.bid_1", 1)), s)
	both, _ := runConfig(t, []byte(pubBidConfig+`  - event: bid.placed_odd
    table: public.bid_1
    operations: [insert]
    data: [id]
`), db.settings())

	out, _, _ := pubCLI(t, "check", "--config", both)
	ckWantLines(t, out, `FAIL  publication walhook: publishes public\.bid via its root \(publish_via_partition_root\), so the changes of its partition public\.bid_1 arrive as public\.bid and rules on public\.bid_1 never fire — fix: write the rules of public\.bid_1 on public\.bid \(a when: on the partition key selects its rows\)$`)
	_, errOut, code := pubCLI(t, "setup", "--config", both)
	if code != 1 || !strings.Contains(errOut, "public.bid_1 is a partition of public.bid, which the rules map too") {
		t.Fatalf("setup with rules on a table and its partition: exit %d; want 1 and the partition named", code)
	}

	out, _, _ = pubCLI(t, "check", "--config", leaf)
	ckWantLines(t, out, `FAIL  publication walhook: publishes public\.bid via its root .* rules on public\.bid_1 never fire — fix: walhook setup$`)
	ckNoLines(t, out, `FAIL  publication walhook: does not publish public\.bid_1`)
	if _, _, code := pubCLI(t, "setup", "--config", leaf); code != 0 {
		t.Fatalf("setup exit %d", code)
	}
	out, _, code = pubCLI(t, "check", "--config", leaf)
	if code != 0 {
		t.Fatalf("check after setup exit %d", code)
	}
	ckWantLines(t, out, `ok    publication walhook: publishes the 1 rule tables$`)
}

// The DBA's publication of a partitioned rule table without
// publish_via_partition_root: walhook may not alter it, so check and setup
// both give its owner the statement to run.
func TestPartitionedTableDBAPublication(t *testing.T) {
	t.Parallel()
	db, file := pubDBARun(t, pubBidConfig, func(role string) string {
		return pubBidSchema + `CREATE PUBLICATION walhook FOR TABLE bid;
		GRANT SELECT ON bid TO ` + role + `; CREATE SCHEMA walhook AUTHORIZATION ` + role
	})

	fix := `have postgres \(or a superuser\) run ALTER PUBLICATION walhook SET \(publish_via_partition_root = true\);`
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  publication walhook: does not publish public\.bid under its name: .* — fix: `+fix+`$`)
	_, errOut, code := pubCLI(t, "setup", "--config", file)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: publication walhook publishes the partitions of public\.bid under their own names .* — fix: have postgres \(or a superuser\) run ALTER PUBLICATION "walhook" SET \(publish_via_partition_root = true\); and then run walhook setup again`)

	ckExec(t, db.dsn, `ALTER PUBLICATION walhook SET (publish_via_partition_root = true)`)
	if _, _, code := pubCLI(t, "setup", "--config", file); code != 0 {
		t.Fatalf("setup after the DBA's ALTER exit %d", code)
	}
	if _, _, code := pubCLI(t, "check", "--config", file); code != 0 {
		t.Fatalf("check after setup exit %d", code)
	}
}

const pubLotSchema = `CREATE TABLE lot (id bigint PRIMARY KEY, status text NOT NULL, title text, price int);
	INSERT INTO lot VALUES (1, 'draft', 'Chair', 10);`

const pubLotConfig = `
source:
  dsn: set-by-test
events:
  - event: lot.updated
    table: public.lot
    operations: [update]
    data: [id, status, price]
`

const pubLotFilter = `ALTER PUBLICATION walhook SET TABLE lot (id, status, title) WHERE (status <> 'draft')`

// A row filter turns an UPDATE across it into an INSERT or a DELETE, and a
// column list withholds columns rules read. On a publication walhook may
// alter: check fails with walhook setup as the fix, run refuses to start,
// setup publishes the table whole again, and then the update of a draft
// reaches its rule.
func TestPublicationRowFilterAndColumnList(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, pubLotSchema)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(pubLotConfig), s)
	db.setup(t, cfg)
	db.exec(t, pubLotFilter)

	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  publication walhook: publishes public\.lot with a row filter WHERE \(status <> 'draft'::text\) \(an UPDATE that moves a row into or out of it arrives as an INSERT or a DELETE, so update rules miss it\) and a column list \(id, status, title\) .* — fix: walhook setup$`)

	_, errOut, code := pubCLI(t, "run", "--config", file)
	if code != 1 {
		t.Fatalf("run exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `the publication does not send the rule tables' changes as the rules need them:`,
		`^  publication walhook publishes public\.lot with a row filter WHERE .* and a column list \(id, status, title\) .* — fix: walhook setup$`)

	out, _, code = pubCLI(t, "setup", "--config", file)
	if code != 0 {
		t.Fatalf("setup exit %d", code)
	}
	ckWantLines(t, out, `^publication walhook now publishes public\.lot whole \(it had a row filter or column list\)$`)
	if out, _, code = pubCLI(t, "check", "--config", file); code != 0 {
		t.Fatalf("check after setup exit %d", code)
	}

	p := startRunProc(t, "--config", file)
	db.exec(t, `UPDATE lot SET status = 'open' WHERE id = 1`)
	runWaitFor(t, 30*time.Second, "the update of the draft", func() bool { return rc.Unique() == 1 }, p.diag)
	d := rc.deliveries()[0]
	data, _ := runBody(t, d.Body)["data"].(map[string]any)
	if d.Event != "lot.updated" || data["status"] != "open" || fmt.Sprint(data["price"]) != "10" {
		t.Errorf("delivered %s %v; want lot.updated with status open and price 10", d.Event, data)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// The same on the DBA's publication: check and setup give its owner the
// SET TABLE to run, which publishes the rule tables whole.
func TestPublicationRowFilterDBA(t *testing.T) {
	t.Parallel()
	db, file := pubDBARun(t, pubLotConfig, func(role string) string {
		return pubLotSchema + `CREATE PUBLICATION walhook FOR TABLE lot; ` + pubLotFilter + `;
		GRANT SELECT ON lot TO ` + role + `; CREATE SCHEMA walhook AUTHORIZATION ` + role
	})

	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  publication walhook: publishes public\.lot with a row filter .* — fix: have postgres \(or a superuser\) run ALTER PUBLICATION walhook SET TABLE public\.lot; \(without WHERE or a column list\)$`)
	_, errOut, code := pubCLI(t, "setup", "--config", file)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: publication walhook publishes public\.lot with a row filter or a column list, .* — fix: have postgres \(or a superuser\) run ALTER PUBLICATION "walhook" SET TABLE "public"\."lot"; and then run walhook setup again`)
	// Refused before anything changed: the store is not migrated either.
	if db.count(t, `SELECT count(*) FROM pg_class WHERE relnamespace = 'walhook'::regnamespace`) != 0 {
		t.Error("setup migrated the store before refusing the DBA's publication")
	}

	ckExec(t, db.dsn, `ALTER PUBLICATION walhook SET TABLE public.lot`)
	if _, _, code := pubCLI(t, "setup", "--config", file); code != 0 {
		t.Fatalf("setup after the DBA's ALTER exit %d", code)
	}
	if _, _, code := pubCLI(t, "check", "--config", file); code != 0 {
		t.Fatalf("check after setup exit %d", code)
	}
}

// check names the fix that works: for a publication another role owns,
// setup changes nothing, so the fix is the ALTER PUBLICATION its owner
// runs; for a publication this role may not create, the CREATE of the
// create publication line, not walhook setup.
func TestCheckFixForAPublicationSetupCannotChange(t *testing.T) {
	t.Parallel()
	db, file := pubDBARun(t, pubLotConfig, func(role string) string {
		return pubLotSchema + `CREATE TABLE other (id int PRIMARY KEY);
		GRANT SELECT ON lot, other TO ` + role + `; CREATE SCHEMA walhook AUTHORIZATION ` + role
	})

	// No publication, and no right to create one.
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `FAIL  publication walhook: does not exist, and this role may not create it — fix: what the create publication line says \(then walhook setup\)$`,
		`FAIL  create publication: .* — fix: as a superuser or the tables' owner run: CREATE PUBLICATION walhook FOR TABLE public\.lot WITH \(publish_via_partition_root = true\);$`)
	if strings.Contains(out, "run walhook setup") {
		t.Errorf("check says walhook setup fixes it:\n%s", out)
	}

	// The DBA's publication, publishing another table instead.
	ckExec(t, db.dsn, `CREATE PUBLICATION walhook FOR TABLE other WITH (publish_via_partition_root = true)`)
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `FAIL  publication walhook: does not publish public\.lot — fix: have postgres \(or a superuser\) run ALTER PUBLICATION walhook SET TABLE public\.lot;$`,
		`warn  publication walhook: also publishes public\.other, which no rule maps \(decoded and ignored\) — fix: have postgres`)
	if strings.Contains(out, "run walhook setup") || strings.Contains(out, "walhook setup removes") {
		t.Errorf("check says walhook setup fixes it:\n%s", out)
	}

	// ... and a table of the store schema too.
	ckExec(t, db.dsn, `CREATE TABLE walhook.stray (id int PRIMARY KEY); ALTER PUBLICATION walhook ADD TABLE walhook.stray`)
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `FAIL  publication walhook: publishes walhook's own store tables walhook\.stray — fix: have postgres \(or a superuser\) run ALTER PUBLICATION walhook SET TABLE public\.lot;$`)
	ckExec(t, db.dsn, `DROP TABLE walhook.stray`) // the superuser's, in the role's schema: DROP OWNED would not go

	// ... and not the updates the rule maps.
	ckExec(t, db.dsn, `ALTER PUBLICATION walhook SET (publish = 'insert')`)
	out, _, code = pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `FAIL  publication walhook: does not publish update, which rules map — fix: have postgres \(or a superuser\) run ALTER PUBLICATION walhook SET \(publish = 'insert, update, delete, truncate'\);$`)
}

// pubDBARun is a run database whose publication and store schema a DBA
// prepared: the config connects as a role of the test's own, with
// REPLICATION, that owns no table; schema (given that role's name) runs as
// the superuser.
func pubDBARun(t *testing.T, config string, schema func(role string) string) (*runDB, string) {
	t.Helper()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	db := newRunDB(t, schema(role))
	t.Cleanup(func() { ckExec(t, db.dsn, `DROP OWNED BY `+role) })
	s := db.settings()
	s["source.dsn"] = c.DSNAs(role, ckDBName(t, db.dsn))
	file, _ := runConfig(t, []byte(config), s)
	return db, file
}
