package main

import (
	"context"
	"github.com/walhook/walhook/dispatch"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

// Setup twice: the second run creates nothing and says what it found.
func TestSetupIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, dsn, db)
	out, errOut, code := runCLI(t, ctx, "setup", "--config", cfg)
	t.Logf("first setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("first setup exit %d", code)
	}
	ckWantLines(t, out, `store schema walhook: applied`, `created publication walhook`, `created replication slot `+db)

	out, errOut, code = runCLI(t, ctx, "setup", "--config", cfg)
	t.Logf("second setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("second setup exit %d", code)
	}
	ckWantLines(t, out,
		`store schema walhook already at version \d+$`,
		`publication walhook already publishes public\.channels, .*public\.problem_reports`,
		`replication slot `+db+` already exists \(pgoutput\); kept$`,
	)
	ckNoLines(t, out, `created`, `applied`, `warn`)

	// One permanent pgoutput slot; the publication holds the 8 rule tables
	// and nothing of the store schema.
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND plugin = 'pgoutput' AND NOT temporary`, db); n != 1 {
		t.Fatalf("%d permanent pgoutput slots named %s, want 1", n, db)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook' AND schemaname = 'public'`); n != 8 {
		t.Fatalf("publication has %d public tables, want 8", n)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook' AND schemaname = 'walhook'`); n != 0 {
		t.Fatalf("publication includes %d store tables", n)
	}
}

// Without --replica-identity setup changes no table, and says which ones a
// rule needs FULL on.
func TestSetupWarnsReplicaIdentity(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	ckExec(t, dsn, `ALTER TABLE public.members REPLICA IDENTITY DEFAULT`)
	out, errOut, code := runCLI(t, context.Background(), "setup", "--config", ckSampleConfig(t, dsn, db))
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	ckWantLines(t, out, `warn: rules read old values of public\.members, whose REPLICA IDENTITY does not send them; .*walhook setup --replica-identity`)
	if got := ckScalar[string](t, dsn, `SELECT relreplident::text FROM pg_class WHERE oid = 'public.members'::regclass`); got != "d" {
		t.Fatalf("setup without --replica-identity changed members to %q", got)
	}
}

// Rules that do not fit the schema: setup changes nothing at all.
func TestSetupRefusesSchemaMismatch(t *testing.T) {
	t.Parallel()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	ckExec(t, dsn, `ALTER TABLE public.messages DROP COLUMN body`)
	out, errOut, code := runCLI(t, context.Background(), "setup", "--config", ckSampleConfig(t, dsn, db))
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errOut, "the source schema is not ready for the rules; nothing changed") ||
		!strings.Contains(errOut, `column "body" does not exist in public.messages`) {
		t.Fatalf("stderr does not explain the mismatch:\n%s", errOut)
	}
	n := ckScalar[int64](t, dsn, `SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1)
		+ (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')`, db)
	if n != 0 {
		t.Fatalf("refused setup left %d objects behind", n)
	}
}

// A table without a primary key has no replica identity: publishing it
// would make the application's UPDATEs fail, so check flags it and setup
// publishes it only with --replica-identity (which sets FULL).
func TestSetupTableWithoutKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	ckExec(t, dsn, `ALTER TABLE public.inspections DROP CONSTRAINT inspections_pkey CASCADE`)
	cfg := ckSampleConfig(t, dsn, db)

	out, _, code := runCLI(t, ctx, "check", "--config", cfg)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  table public\.inspections: REPLICA IDENTITY DEFAULT without key columns: once published, every UPDATE and DELETE on it fails — fix: ALTER TABLE public\.inspections REPLICA IDENTITY FULL;`)

	_, errOut, code := runCLI(t, ctx, "setup", "--config", cfg)
	if code != 1 || !strings.Contains(errOut, "public.inspections has no replica identity (no primary key): publishing it would make every UPDATE and DELETE on it fail") {
		t.Fatalf("setup exit %d, stderr %q; want a refusal naming public.inspections", code, errOut)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_publication`); n != 0 {
		t.Fatal("refused setup created the publication")
	}

	out, errOut, code = runCLI(t, ctx, "setup", "--config", cfg, "--replica-identity")
	if code != 0 {
		t.Fatalf("setup --replica-identity exit %d:\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `set REPLICA IDENTITY FULL on public\.inspections$`)
	// The application can update the table again.
	ckExec(t, dsn, `UPDATE public.inspections SET notes = notes`)
	if out, _, code := runCLI(t, ctx, "check", "--config", cfg); code != 0 {
		t.Fatalf("check after setup --replica-identity exit %d:\n%s", code, out)
	}
}

// The DBA script of docs/operations.md: a role with REPLICATION but no
// CREATE on the database and owning no table; the DBA has created the
// publication and the store schema. setup then only migrates the store and
// creates the slot, and check passes.
func TestSetupDBAPrepared(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	dsn, db := ckSampleDB(t, c)
	t.Cleanup(func() { ckExec(t, dsn, `DROP OWNED BY `+role) })
	ckExec(t, dsn, `
		GRANT USAGE ON SCHEMA public TO `+role+`;
		GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role+`;
		CREATE PUBLICATION walhook FOR TABLE public.members, public.lot_submissions, public.inspections,
		    public.inspection_defects, public.problem_reports, public.problem_actions, public.channels, public.messages;
		CREATE SCHEMA walhook AUTHORIZATION `+role)
	cfg := ckSampleConfig(t, c.DSNAs(role, db), db)

	out, errOut, code := runCLI(t, ctx, "check", "--config", cfg)
	t.Logf("check:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `ok    role: `+role+` has REPLICATION$`, `ok    publication walhook: publishes the 8 rule tables$`, `not ready: run walhook setup$`,
		// The schema the DBA created is there, only still empty: check
		// does not call it missing.
		`FAIL  store schema walhook: exists, but holds no walhook store yet \(walhook needs version \d+\) — fix: walhook setup$`)
	ckNoLines(t, out, `FAIL  create`, `.*store schema walhook: does not exist`)

	out, errOut, code = runCLI(t, ctx, "setup", "--config", cfg)
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("setup exit %d", code)
	}
	ckWantLines(t, out, `store schema walhook: applied`, `publication walhook already publishes`, `created replication slot `+db)
	if out, errOut, code := runCLI(t, ctx, "check", "--config", cfg); code != 0 {
		t.Fatalf("check after setup exit %d:\n%s%s", code, out, errOut)
	}

	// The publication stays the DBA's: when it no longer fits the rules,
	// setup says what the DBA must run instead of failing on "must be
	// owner", and changes nothing.
	ckExec(t, dsn, `ALTER PUBLICATION walhook DROP TABLE public.messages`)
	out, errOut, code = runCLI(t, ctx, "setup", "--config", cfg)
	t.Logf("setup with the DBA's publication short of a table:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: publication walhook does not publish public\.messages, which the rules map; it belongs to role postgres, which this role may not act for, so walhook cannot change it — fix: have postgres \(or a superuser\) run ALTER PUBLICATION "walhook" SET TABLE .*"public"\."messages".*; and then run walhook setup again`)
	ckNoLines(t, errOut, `.*must be owner`)
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook'`); n != 7 {
		t.Fatalf("publication has %d tables after a refused setup, want the 7 the DBA left", n)
	}

	// Its publish option leaving out an operation the rules map: the same.
	ckExec(t, dsn, `ALTER PUBLICATION walhook ADD TABLE public.messages; ALTER PUBLICATION walhook SET (publish = 'insert')`)
	out, errOut, code = runCLI(t, ctx, "setup", "--config", cfg)
	t.Logf("setup with the DBA's publication publishing inserts only:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: publication walhook does not publish delete, update, which the rules map \(its publish option\), so PostgreSQL sends no such change; it belongs to role postgres, which this role may not act for, so walhook cannot change it — fix: have postgres \(or a superuser\) run ALTER PUBLICATION "walhook" SET \(publish = 'insert, update, delete, truncate'\); and then run walhook setup again`)
	if upd := ckScalar[bool](t, dsn, `SELECT pubupdate FROM pg_publication WHERE pubname = 'walhook'`); upd {
		t.Fatal("a refused setup changed the publish option")
	}

	// teardown drops what is walhook's (slot, store) and names what is
	// left for the DBA; twice is harmless.
	for i := range 2 {
		out, errOut, code = runCLI(t, ctx, "teardown", "--config", cfg, "--store")
		t.Logf("teardown %d:\n%s%s", i+1, out, errOut)
		if code != 0 {
			t.Fatalf("teardown %d exit %d, want 0", i+1, code)
		}
		ckWantLines(t, out, `warn: publication walhook belongs to role postgres, .* so it stays \(a publication retains no WAL\); to remove it, have postgres \(or a superuser\) run DROP PUBLICATION "walhook";$`)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, db); n != 0 {
		t.Fatalf("%d slots left after teardown", n)
	}
	if ckScalar[bool](t, dsn, `SELECT to_regnamespace('walhook') IS NOT NULL`) {
		t.Fatal("store schema still there after teardown --store")
	}
}

// A server that cannot take the slot — wal_level replica, every slot in
// use, a role without REPLICATION — is refused before anything changes,
// with check's fixes. Before, setup migrated the store and created the
// publication, then failed on PostgreSQL's bare error for the slot.
func TestSetupRefusesServerThatCannotTakeTheSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"wal_level": "replica", "max_replication_slots": "1"}})
	dsn, db := ckSampleDB(t, c)
	ckExec(t, dsn, `SELECT pg_create_physical_replication_slot('someone_else')`)
	role := ckReplicationRole(t, c)
	ckExec(t, dsn, `ALTER ROLE `+role+` NOREPLICATION; GRANT CREATE ON DATABASE `+db+` TO `+role+`;
		GRANT SELECT ON ALL TABLES IN SCHEMA public TO `+role)
	t.Cleanup(func() { ckExec(t, dsn, `DROP OWNED BY `+role) })
	for _, cfg := range []string{ckSampleConfig(t, dsn, db), ckSampleConfig(t, c.DSNAs(role, db), db)} {
		out, errOut, code := runCLI(t, ctx, "setup", "--config", cfg)
		t.Logf("setup:\n%s%s", out, errOut)
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		ckWantLines(t, errOut, `setup: the source server cannot take replication slot `+db+`; nothing changed:$`,
			`  wal_level: is replica; logical decoding needs logical — fix: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL$`,
			`  max_replication_slots: all 1 replication slots are in use .* — fix: ALTER SYSTEM SET max_replication_slots = 2;`)
		if strings.Contains(cfg, role) {
			ckWantLines(t, errOut, `  role: `+role+` has neither REPLICATION nor superuser.* — fix: ALTER ROLE `+role+` REPLICATION;`)
		}
		if n := ckScalar[int64](t, dsn, `SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')`); n != 0 {
			t.Fatalf("refused setup left %d objects behind", n)
		}
	}
}

// A slot of the config's name that walhook cannot use — a standby's
// physical slot, another database's logical slot — is a server that
// cannot take walhook's slot too: setup migrated the store and created
// the publication, and only then failed on the slot. It is now refused
// with the other prerequisites, before anything changes.
func TestSetupRefusesASlotNameTakenBeforeAnythingChanges(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, `CREATE TABLE items (id int8 PRIMARY KEY, name text);`)
	db.exec(t, `SELECT pg_create_physical_replication_slot($1)`, db.slot)
	t.Cleanup(func() { db.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, db.slot) })
	file, _ := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: item.created
    table: public.items
    operations: [insert]
`), db.settings())
	_, errOut, code := pubCLI(t, "setup", "--config", file)
	if code != 1 || !strings.Contains(errOut, "physical slot") || !strings.Contains(errOut, "nothing changed") {
		t.Fatalf("setup exit %d, want 1 naming the physical slot and that nothing changed:\n%s", code, errOut)
	}
	if n := db.count(t, `SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')`); n != 0 {
		t.Fatalf("refused setup left %d objects behind", n)
	}
}

// setup of a config on a store schema that holds another slot's cursor,
// where the store is older than this binary: the refusal says "nothing
// was changed", but setup had migrated the store first (printing
// "applied …"). It now refuses before the migration.
func TestSetupRefusesASharedStoreBeforeMigrating(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newRunDB(t, `CREATE TABLE items (id int8 PRIMARY KEY, name text);`)
	if _, err := dispatch.Migrate(ctx, db.pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	// A store the version-6 walhook made, used by another config's slot.
	db.exec(t, `DROP TABLE walhook.endpoints_version, walhook.endpoints_deleted; DROP FUNCTION walhook.endpoints_changed() CASCADE;
		DROP FUNCTION walhook.endpoints_stamp() CASCADE; ALTER TABLE walhook.endpoints DROP COLUMN changed_version;
		DELETE FROM walhook.schema_version WHERE version >= 7;
		INSERT INTO walhook.cursor (slot, system_id, lsn) VALUES ('other_config', 'x', '0/1000')`)
	file, _ := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: item.created
    table: public.items
    operations: [insert]
`), db.settings())
	out, errOut, code := pubCLI(t, "setup", "--config", file)
	if code != 1 || !strings.Contains(errOut, "holds the cursor of slot other_config") {
		t.Fatalf("setup exit %d, want 1 refusing the shared store:\n%s%s", code, out, errOut)
	}
	if strings.Contains(out, "applied") || db.count(t, `SELECT max(version) FROM walhook.schema_version`) != 6 {
		t.Fatalf("the refused setup migrated the store:\n%s", out)
	}
}
