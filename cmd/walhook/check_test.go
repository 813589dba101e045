package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/cpuyield"
	"github.com/walhook/walhook/internal/pgtest"
)

const aeSampleDir = "../../testdata/auction-excellence"

// ckAPIKey satisfies config.MinAPIKeyLen.
const ckAPIKey = "0123456789abcdef0123456789abcdef0123456789abcdef"

// ckSampleDB creates a database on c loaded with the Auction Excellence
// schema and returns its DSN and name.
func ckSampleDB(t *testing.T, c *pgtest.Cluster) (dsn, name string) {
	t.Helper()
	dsn = c.NewDatabase(t)
	schema, err := os.ReadFile(filepath.Join(aeSampleDir, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	ckExec(t, dsn, string(schema))
	return dsn, ckDBName(t, dsn)
}

func ckDBName(t *testing.T, dsn string) string {
	t.Helper()
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return pc.Database
}

// ckSampleConfig writes the sample walhook.yaml with the database filled in
// (instead of ${DATABASE_URL}, so tests stay parallel) and a slot named
// after the database (slots are per cluster, not per database).
func ckSampleConfig(t *testing.T, dsn, slot string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(aeSampleDir, "walhook.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer("${DATABASE_URL}", dsn, "${WALHOOK_API_KEY}", ckAPIKey, "slot: walhook", "slot: "+slot).Replace(string(b))
	if !strings.Contains(s, "slot: "+slot) {
		t.Fatal("sample config: slot line not found")
	}
	p := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ckExec(t *testing.T, dsn, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func ckScalar[T any](t *testing.T, dsn, sql string, args ...any) T {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v T
	if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// ckWantLines asserts that out has a line matching each pattern (regexps,
// anchored at the line start).
func ckWantLines(t *testing.T, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		re := regexp.MustCompile(`(?m)^` + p)
		if !re.MatchString(out) {
			t.Errorf("no line matching %q in:\n%s", p, out)
		}
	}
}

func ckNoLines(t *testing.T, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if loc := regexp.MustCompile(`(?m)^` + p).FindStringIndex(out); loc != nil {
			t.Errorf("unexpected line matching %q in:\n%s", p, out)
		}
	}
}

// ckWithPassword adds a password to a trust-auth DSN: the server ignores it,
// and no output may show it.
func ckWithPassword(dsn string) string {
	return strings.Replace(dsn, "postgres://postgres@", "postgres://postgres:pw-s3cret-x@", 1)
}

// The sample schema sets FULL where the sample rules need it; with one
// table put back to DEFAULT check must name exactly that table and its
// fix, and setup --replica-identity must make everything ready.
func TestCheckSampleThenSetup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	ckExec(t, dsn, `ALTER TABLE public.problem_reports REPLICA IDENTITY DEFAULT`)
	cfg := ckSampleConfig(t, ckWithPassword(dsn), db)

	out, errOut, code := runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	if strings.Contains(out+errOut, "pw-s3cret-x") {
		t.Fatal("check printed the password")
	}
	ckWantLines(t, out,
		`source host=127\.0\.0\.1 port=\d+ db=`+db+` user=postgres$`,
		`ok    wal_level: logical$`,
		`ok    role: postgres is a superuser$`,
		`ok    max_replication_slots: .*one free for `+db,
		`ok    table public\.members: readable, \d+ columns, REPLICA IDENTITY FULL$`,
		`ok    table public\.problem_reports: readable, \d+ columns, REPLICA IDENTITY DEFAULT \(old key: id\)$`,
		`FAIL  rule: .*walhook\.yaml:\d+:\d+: events\[\d+\]: event problem\.status_changed: reads old values \(changed: status, data: status\) but public\.problem_reports has REPLICA IDENTITY DEFAULT, which does not send them — fix: ALTER TABLE public\.problem_reports REPLICA IDENTITY FULL;`,
		`FAIL  publication walhook: does not exist — fix: walhook setup$`,
		`FAIL  slot `+db+`: does not exist — fix: walhook setup$`,
		`FAIL  store schema walhook: does not exist .*— fix: walhook setup$`,
		`not ready: \d+ problem\(s\) above`,
	)
	ckNoLines(t, out, `FAIL  table`, `FAIL  rule: .*public\.members`)

	out, errOut, code = runCLI(t, ctx, "setup", "--config", cfg, "--replica-identity")
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("setup exit %d", code)
	}
	ckWantLines(t, out,
		`store schema walhook: applied 001_init\.sql`,
		`created publication walhook for .*public\.problem_reports`,
		`set REPLICA IDENTITY FULL on public\.problem_reports$`,
		`created replication slot `+db+` \(pgoutput\)`,
	)
	if got := ckScalar[string](t, dsn, `SELECT relreplident::text FROM pg_class WHERE oid = 'public.problem_reports'::regclass`); got != "f" {
		t.Fatalf("problem_reports replica identity %q after setup --replica-identity, want f", got)
	}

	out, errOut, code = runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check after setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("check after setup exit %d, want 0", code)
	}
	ckWantLines(t, out,
		`ok    rules: every rule's table and columns exist`,
		`ok    publication walhook: publishes the 8 rule tables$`,
		`ok    slot `+db+`: pgoutput, wal_status reserved`,
		`ok    store schema walhook: at version \d+$`,
		ckCPUYieldLine(),
		`ready: walhook run can start$`,
	)
	// cpu.yield only warns (off for an unprivileged user); nothing else may.
	ckNoLines(t, regexp.MustCompile(`(?m)^warn  cpu\.yield: .*$`).ReplaceAllString(out, ""), `FAIL`, `warn`)
}

// A store table added to walhook's publication (its changes would be
// decoded as the application's) is a FAIL that setup fixes, and does.
func TestCheckPublicationWithStoreTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, dsn, db)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", cfg); code != 0 {
		t.Fatalf("setup exit %d:\n%s%s", code, out, errOut)
	}
	ckExec(t, dsn, `ALTER PUBLICATION walhook ADD TABLE walhook.deliveries`)
	out, errOut, code := runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  publication walhook: publishes walhook's own store tables walhook\.deliveries — fix: walhook setup$`)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", cfg); code != 0 {
		t.Fatalf("second setup exit %d:\n%s%s", code, out, errOut)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook' AND schemaname = 'walhook'`); n != 0 {
		t.Fatalf("setup left %d store tables in the publication", n)
	}
}

// ckCPUYieldLine is check's cpu.yield line for this test process, which
// starts walhook check as a child with its own user and limits: on for
// root (CI), a warning with the fix for a user without CAP_SYS_NICE.
func ckCPUYieldLine() string {
	if cpuyield.Available() == nil {
		return `ok    cpu\.yield: on: a walhook started like this check may yield the CPU and take it back$`
	}
	return `warn  cpu\.yield: off for a walhook started like this check: .* — fix: to yield, start walhook at normal priority as root or with CAP_SYS_NICE .*; or set cpu\.yield: false$`
}

// Only the slot, publication and store are missing: check says to run
// setup, and nothing else.
func TestCheckSaysRunSetup(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	out, _, code := runCLI(t, context.Background(), "check", "--config", ckSampleConfig(t, dsn, db))
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `not ready: run walhook setup$`)
	if n := strings.Count(out, "FAIL"); n != 3 {
		t.Fatalf("%d FAIL lines, want 3 (publication, slot, store):\n%s", n, out)
	}
}

// A cluster set up wrong on purpose: wal_level=replica, every slot and
// every WAL sender taken.
func TestCheckWrongCluster(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{
		"wal_level":             "replica",
		"max_replication_slots": "1",
		"max_wal_senders":       "0",
	}})
	dsn, db := ckSampleDB(t, c)
	ckExec(t, dsn, `SELECT pg_create_physical_replication_slot('someone_else')`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", ckSampleConfig(t, dsn, db))
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  wal_level: is replica; logical decoding needs logical — fix: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL$`,
		`FAIL  max_replication_slots: all 1 replication slots are in use and slot `+db+` does not exist yet — fix: ALTER SYSTEM SET max_replication_slots = 2; then restart PostgreSQL`,
		`FAIL  max_wal_senders: is 0: no replication connection is possible — fix: ALTER SYSTEM SET max_wal_senders = 10; then restart PostgreSQL$`,
		`not ready: \d+ problem\(s\) above`,
	)
}

// Every WAL sender busy (another consumer streams): the stream could not
// start, and the fix names the setting one higher.
func TestCheckWALSendersAllInUse(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"max_wal_senders": "1"}})
	dsn, db := ckSampleDB(t, c)
	ckExec(t, dsn, `CREATE PUBLICATION walhook FOR TABLE public.members`)
	ckExec(t, dsn, `SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput')`)
	ckHoldSlot(t, dsn, "someone_else")
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", ckSampleConfig(t, dsn, db))
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  max_wal_senders: all 1 WAL senders are in use — fix: ALTER SYSTEM SET max_wal_senders = 2; then restart PostgreSQL$`)
}

// Every WAL sender busy, one of them streaming this config's own slot (a
// running walhook; check beside it is routine): its sender is walhook's,
// so the line passes.
func TestCheckWALSendersAllInUseByThisSlot(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"max_wal_senders": "1"}})
	dsn, db := ckSampleDB(t, c)
	ckExec(t, dsn, `CREATE PUBLICATION walhook FOR TABLE public.members`)
	ckExec(t, dsn, `SELECT pg_create_logical_replication_slot('`+db+`', 'pgoutput')`)
	ckHoldSlot(t, dsn, db)
	out, errOut, _ := runCLI(t, context.Background(), "check", "--config", ckSampleConfig(t, dsn, db))
	t.Logf("check:\n%s%s", out, errOut)
	ckWantLines(t, out, `ok    max_wal_senders: 1 of 1 in use, one of them streaming slot `+db+`$`)
	ckNoLines(t, out, `FAIL  max_wal_senders`)
}

// A role without REPLICATION, without CREATE on the database, owning no
// table and missing SELECT on one table.
func TestCheckUnprivilegedRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := "norep_" + strings.ReplaceAll(t.Name(), "/", "_")
	role = strings.ToLower(role)
	if err := c.Exec(ctx, "postgres", `CREATE ROLE `+role+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role) })
	dsn, db := ckSampleDB(t, c)
	t.Cleanup(func() { ckExec(t, dsn, `DROP OWNED BY `+role) })
	ckExec(t, dsn, `GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role+`; REVOKE SELECT ON public.messages FROM `+role)

	out, errOut, code := runCLI(t, ctx, "check", "--config", ckSampleConfig(t, c.DSNAs(role, db), db))
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`source host=127\.0\.0\.1 port=\d+ db=`+db+` user=`+role+`$`,
		`FAIL  role: `+role+` has neither REPLICATION nor superuser.* — fix: ALTER ROLE `+role+` REPLICATION; \(as a superuser\)$`,
		`ok    table public\.members: readable`,
		`FAIL  table public\.messages: `+role+` has no SELECT privilege — fix: GRANT SELECT ON public\.messages TO `+role+`;$`,
		`FAIL  create publication: `+role+` has no CREATE on database `+db+` and does not own .*public\.problem_reports`,
		`FAIL  create store: `+role+` has no CREATE on database `+db+` — fix: CREATE SCHEMA walhook AUTHORIZATION `+role+`;`,
	)
}

// A role with SELECT on the tables but no USAGE on their schema reads
// none of them: the fix grants both.
func TestCheckNoUsageOnSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := strings.ToLower("nousage_" + t.Name())
	if err := c.Exec(ctx, "postgres", `CREATE ROLE `+role+` LOGIN REPLICATION`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role) })
	dsn, db := ckSampleDB(t, c)
	t.Cleanup(func() { ckExec(t, dsn, `DROP OWNED BY `+role) })
	ckExec(t, dsn, `GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role+`; REVOKE USAGE ON SCHEMA public FROM PUBLIC`)

	out, errOut, code := runCLI(t, ctx, "check", "--config", ckSampleConfig(t, c.DSNAs(role, db), db))
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  table public\.messages: `+role+` has no USAGE on schema public — fix: GRANT USAGE ON SCHEMA public TO `+role+`; GRANT SELECT ON public\.messages TO `+role+`;$`,
	)
	// Said once, with its fix: not again as a failed query.
	if strings.Contains(out, "FAIL  query:") {
		t.Errorf("a query failed on the missing USAGE:\n%s", out)
	}
}

// The schema drifted from the rules: a column and a table are gone, and
// a column the rules read became a generated one (logical replication
// does not send it: adding the column is not the fix).
func TestCheckMissingColumnAndTable(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	ckExec(t, dsn, `ALTER TABLE public.problem_reports DROP COLUMN assignee_id; DROP TABLE public.inspection_defects;
		ALTER TABLE public.problem_reports DROP COLUMN priority;
		ALTER TABLE public.problem_reports ADD COLUMN priority text GENERATED ALWAYS AS ('normal') STORED`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", ckSampleConfig(t, dsn, db))
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  rule: .*walhook\.yaml:\d+:\d+: events\[\d+\].*: event problem\.assigned: column "assignee_id" does not exist in public\.problem_reports — fix: add the column, or correct the rule$`,
		`FAIL  rule: .*walhook\.yaml:\d+:\d+: events\[\d+\]\.table: event inspection\.defect_added: table public\.inspection_defects does not exist .*— fix: create the table, or correct the rule's table$`,
		`FAIL  rule: .*walhook\.yaml:\d+:\d+: events\[\d+\]\.table: event problem\.created: column "priority" of public\.problem_reports is a generated column.* — fix: read the columns it is computed from, or correct the rule$`,
	)
}

// An unreachable source is one FAIL line naming host, database and user,
// never the password; the store is still checked (and fails the same way).
func TestCheckUnreachable(t *testing.T) {
	t.Parallel()
	cfg := writeTempConfig(t, "walhook.yaml", `source:
  dsn: postgres://walhook:pw-s3cret-x@127.0.0.1:1/app?sslmode=disable&connect_timeout=5
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`source host=127\.0\.0\.1 port=1 db=app user=walhook$`,
		`FAIL  connect: cannot connect to the source: .* — fix: check source\.dsn, the server and pg_hba\.conf$`,
		`FAIL  store: connect to the store: `,
		ckCPUYieldLine(),
	)
	if strings.Contains(out+errOut, "pw-s3cret-x") {
		t.Fatal("the password was printed")
	}
}

// A connection refused by the server is one line that gives its cause,
// not pgconn's first attempt (sslmode=prefer: "server refused TLS
// connection") on a line of its own.
func TestCheckConnectionErrorOneLine(t *testing.T) {
	t.Parallel()
	dsn := strings.Replace(pgtest.Shared(t).DSN("nosuch_db"), "?sslmode=disable", "", 1)
	cfg := writeTempConfig(t, "walhook.yaml", `source:
  dsn: `+dsn+`
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  connect: cannot connect to the source: failed to connect to .user=postgres database=nosuch_db.: .*database "nosuch_db" does not exist.* — fix: check source\.dsn`,
		`FAIL  store: connect to the store: .*database "nosuch_db" does not exist`)
	if strings.Contains(out, "refused TLS") {
		t.Error("the TLS attempt is reported as if it were the cause")
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "\t") || strings.HasPrefix(l, " ") {
			t.Errorf("a continuation line breaks the one-line-per-item report: %q", l)
		}
	}
}

// check's cpu.yield line: off in the config, and a walhook started at a
// priority of its own (chrt -b: SCHED_BATCH), which run leaves alone.
func TestCheckCPUYield(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	write := func(extra string) {
		t.Helper()
		err := os.WriteFile(cfg, []byte(`source:
  dsn: postgres://walhook@127.0.0.1:1/app?sslmode=disable&connect_timeout=5
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`+extra), 0o600)
		if err != nil {
			t.Fatal(err)
		}
	}
	write("cpu: {yield: false}\n")
	out, errOut, _ := runCLI(t, context.Background(), "check", "--config", cfg)
	ckWantLines(t, out+errOut, `ok    cpu\.yield: off in the config$`)

	write("")
	bin := buildWalhook(t)
	cmd := exec.Command("chrt", "-b", "0", bin, "check", "--config", cfg)
	b, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("chrt -b 0 walhook check: %v\n%s", err, b)
	}
	ckWantLines(t, string(b),
		`warn  cpu\.yield: off for a walhook started like this check: the process was started with its own priority \(batch, nice 0\); it is left as it is — fix: `)
}

// Objects setup would create exist but are wrong for walhook: check names
// each, and says setup is not the whole fix where it is not.
func TestCheckForeignObjects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, dsn, db)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", cfg); code != 0 {
		t.Fatalf("setup exit %d:\n%s%s", code, out, errOut)
	}
	// An older store, a publication that forgot deletes and a table, and an
	// extra table no rule maps.
	ckExec(t, dsn, `DELETE FROM walhook.schema_version WHERE version = (SELECT max(version) FROM walhook.schema_version);
		ALTER PUBLICATION walhook SET (publish = 'insert, update');
		ALTER PUBLICATION walhook DROP TABLE public.messages;
		ALTER PUBLICATION walhook ADD TABLE public.auctions`)
	out, errOut, code := runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  publication walhook: does not publish public\.messages — fix: walhook setup$`,
		`FAIL  publication walhook: does not publish delete, which rules map — fix: walhook setup$`,
		`warn  publication walhook: also publishes public\.auctions, which no rule maps`,
		`FAIL  store schema walhook: at version \d+, this walhook needs \d+ — fix: walhook setup$`,
	)

	// A schema_version table edited by hand: a row below the highest gone.
	ckExec(t, dsn, `DELETE FROM walhook.schema_version WHERE version = 2`)
	out, errOut, code = runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  store schema walhook: schema_version goes up to \d+ without 2: edited by hand, .* — fix: in walhook\.schema_version keep the rows`)

	// A slot of the same name with another plugin, and a FOR ALL TABLES
	// publication: setup would refuse both.
	ckExec(t, dsn, `SELECT pg_drop_replication_slot($1)`, db)
	ckExec(t, dsn, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, db)
	ckExec(t, dsn, `DROP PUBLICATION walhook; CREATE PUBLICATION walhook FOR ALL TABLES`)
	out, errOut, code = runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  publication walhook: is FOR ALL TABLES: every table's changes are decoded and sent to walhook \(its own store's too, when the store is in this database\), where walhook publishes only the rule tables — fix: DROP PUBLICATION walhook; then walhook setup`,
		`FAIL  slot `+db+`: uses plugin test_decoding; walhook needs pgoutput — fix: choose another source\.slot, or drop it: SELECT pg_drop_replication_slot\('`+db+`'\);$`,
	)
	ckNoLines(t, out, `not ready: run walhook setup`)
}

// An admin API without keys would make `walhook run` refuse to start: check
// says so with the fix instead of reporting ready.
func TestCheckAPIWithoutKeys(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, dsn, db)
	// Set up before the keys go: setup refuses such a config as run does.
	if out, _, code := runCLI(t, context.Background(), "setup", "--replica-identity", "--config", cfg); code != 0 {
		t.Fatalf("setup exit %d\n%s", code, out)
	}
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "  keys:\n    - "+ckAPIKey+"\n", "", 1)
	if s == string(b) {
		t.Fatal("sample config: api.keys block not found")
	}
	if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code := runCLI(t, context.Background(), "check", "--config", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `FAIL.*admin API.*api.keys is empty`, `not ready: 1 problem`)
}

// Run's logs and errors name a database as check does, never with its
// password.
func TestDescribeDSN(t *testing.T) {
	for dsn, want := range map[string]string{
		"postgres://walhook:s3cret@db.internal:6432/app?sslmode=require": "host=db.internal port=6432 db=app user=walhook",
		"host=/run/postgresql dbname=app user=walhook password=s3cret":   "host=socket /run/postgresql port=5432 db=app user=walhook",
		"postgres://walhook:s3cret@db.internal:notaport/app":             "(unparsable DSN)",
	} {
		if got := describeDSN(dsn); got != want || strings.Contains(got, "s3cret") {
			t.Errorf("describeDSN(%q) = %q, want %q", dsn, got, want)
		}
	}
}

// Static endpoint URLs are checked by the delivery policy, as run does
// before it starts: an http:// endpoint and one at a private address not
// in delivery.allow fail check, which names them without the URL (it may
// carry a token).
func TestCheckEndpointURLPolicy(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, dsn, db)
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Set up before the endpoints are added: setup refuses them as run does.
	if out, _, code := runCLI(t, context.Background(), "setup", "--replica-identity", "--config", cfg); code != 0 {
		t.Fatalf("setup exit %d\n%s", code, out)
	}
	secret := dispatch.NewSecret()
	s := string(b) + "endpoints:\n" +
		"  - {id: plain, url: \"http://hooks.example.com/in?token=t0k3n\", secret: " + secret + "}\n" +
		"  - {id: inside, url: \"https://10.1.2.3/in\", secret: " + secret + "}\n" +
		"  - {id: fine, url: \"https://hooks.example.com/in\", secret: " + secret + "}\n"
	if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code := runCLI(t, context.Background(), "check", "--config", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	ckWantLines(t, out, `FAIL  endpoints\[0\] plain: url refused by the delivery policy \(.*http:// is not allowed.*\): walhook run would not start`,
		`FAIL  endpoints\[1\] inside: url refused by the delivery policy \(.*\): walhook run would not start`, `not ready: 2 problem`)
	if strings.Contains(out, "t0k3n") || strings.Contains(out, "endpoints[2]") {
		t.Errorf("check repeats a URL or fails the allowed endpoint:\n%s", out)
	}
}

// A rule on a view: the rule check can only call the table missing, so
// check says what it is, with the fix.
func TestCheckRuleOnAView(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	ckExec(t, dsn, `DROP TABLE public.inspection_defects; CREATE VIEW public.inspection_defects AS SELECT 1 AS id`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", ckSampleConfig(t, dsn, db))
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out,
		`FAIL  table public\.inspection_defects: is a view: logical replication publishes tables only, and no change of it would arrive — fix: map the table\(s\) it reads from$`)
}

// A config file that holds secrets written in it (here the API key and a
// DSN password) is flagged while other users can read it, without the
// secrets; once it is private, or once the secrets come from the
// environment, it is not. (Not parallel: it sets variables.)
func TestCheckWarnsOfSecretsInAConfigOthersCanRead(t *testing.T) {
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, ckWithPassword(dsn), db)
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, _ := runCLI(t, context.Background(), "check", "--config", cfg)
	ckWantLines(t, out, `warn  config file: .* mode 0644 .*api\.keys\[0\].*source\.dsn's password.*chmod 600`)
	for _, secret := range []string{ckAPIKey, "pw-s3cret-x"} {
		if strings.Contains(out, secret) {
			t.Errorf("check printed the secret %q:\n%s", secret, out)
		}
	}

	if err := os.Chmod(cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runCLI(t, context.Background(), "check", "--config", cfg)
	ckNoLines(t, out, `warn  config file`)

	// The sample as shipped: secrets from the environment.
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(t.TempDir(), "walhook.yaml")
	s := strings.NewReplacer(ckWithPassword(dsn), "postgres://postgres:${CK_PASSWORD}@"+strings.TrimPrefix(dsn, "postgres://postgres@"),
		ckAPIKey, "${CK_API_KEY}").Replace(string(b))
	if err := os.WriteFile(env, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CK_PASSWORD", "pw-s3cret-x")
	t.Setenv("CK_API_KEY", ckAPIKey)
	out, _, _ = runCLI(t, context.Background(), "check", "--config", env)
	ckNoLines(t, out, `warn  config file`)
}

// A host name that does not resolve fails pgx's connect the same way for
// each TLS mode it tries, and it joins the copies: the message said the
// lookup error twice. errorText (what main prints, and check's one-line
// form) says it once.
func TestConnectErrorSaysTheLookupOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, "postgres://u:pw@walhook-no-such-host.invalid:5432/db?connect_timeout=10")
	if err == nil {
		t.Fatal("connected to a host that cannot resolve")
	}
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if n := strings.Count(err.Error(), last); n < 2 {
		t.Logf("pgx no longer repeats it (%q); nothing to check", err)
	}
	for name, text := range map[string]string{"errorText": errorText(err), "oneLine": oneLine(err)} {
		if n := strings.Count(text, last); n != 1 {
			t.Errorf("%s says %q %d times:\n%s", name, last, n, text)
		}
		if !strings.Contains(text, "walhook-no-such-host.invalid") {
			t.Errorf("%s lost the host name:\n%s", name, text)
		}
	}
}

// A store schema this role may not read: the fix names the role the
// store DSN connects as, not a placeholder.
func TestCheckStoreSchemaNotReadableNamesTheRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	dsn, db := ckSampleDB(t, c)
	t.Cleanup(func() { ckExec(t, dsn, `DROP OWNED BY `+role) })
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", ckSampleConfig(t, dsn, db)); code != 0 {
		t.Fatalf("setup exit %d:\n%s%s", code, out, errOut)
	}
	ckExec(t, dsn, `GRANT USAGE ON SCHEMA public TO `+role+`; GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role)
	out, errOut, code := runCLI(t, ctx, "check", "--config", ckSampleConfig(t, c.DSNAs(role, db), db))
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  store schema walhook: cannot read its version: .* — fix: as postgres \(or a superuser\): GRANT USAGE ON SCHEMA walhook TO `+role+
		`; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO `+role+`; GRANT USAGE ON ALL SEQUENCES IN SCHEMA walhook TO `+role+
		`; \(walhook setup, which migrates the store, then runs as postgres\)$`)

	// run says where the fix is.
	roleDSN := c.DSNAs(role, db)
	rc := newRunReceiver(t, runSecret, nil)
	sample, err := os.ReadFile(ckSampleConfig(t, roleDSN, db))
	if err != nil {
		t.Fatal(err)
	}
	file, _ := runConfig(t, sample, map[string]any{"api.listen": "127.0.0.1:0", "delivery.allow": []string{"127.0.0.1"},
		"delivery.poll_interval": "100ms", "endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	if _, errOut, code := runCLI(t, ctx, "run", "--config", file); code != 1 ||
		!strings.Contains(errOut, "permission denied for schema walhook (SQLSTATE 42501) — fix: walhook check prints the GRANTs the schema's owner runs") {
		t.Errorf("run before the fix: exit %d, %q; want 1 and the pointer to check", code, errOut)
	}

	// The fix as printed is all run needs: check is ready, and a run as
	// the role stores and delivers (static endpoint, claims, attempts).
	_, fix, _ := strings.Cut(out, "(or a superuser): ")
	fix, _, _ = strings.Cut(fix, " (walhook setup")
	ckExec(t, dsn, fix)
	out, errOut, code = runCLI(t, ctx, "check", "--config", ckSampleConfig(t, roleDSN, db))
	if code != 0 {
		t.Fatalf("check after the fix: exit %d\n%s%s", code, out, errOut)
	}
	p := startRunProc(t, "--config", file)
	ckExec(t, dsn, `INSERT INTO auctions (id, name) VALUES ('a0000000-0000-4000-8000-000000000001', 'Spring sale');
		INSERT INTO members (id, auction_id, email, role) VALUES ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'olga@example.com', 'owner')`)
	runWaitFor(t, 30*time.Second, "a delivery", func() bool { return rc.Unique() >= 1 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
}

// ckReplicationRole creates a login role with REPLICATION named after the
// test, dropped when the test ends (after the DROP OWNED BY a caller
// registers later, cleanups running last first).
func ckReplicationRole(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	role := "wh_" + strings.ToLower(t.Name())
	if err := c.Exec(context.Background(), "postgres", `CREATE ROLE `+role+` LOGIN REPLICATION`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role) })
	return role
}
