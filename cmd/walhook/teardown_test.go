package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/internal/pgtest"
)

// ckHoldSlot streams from slot on a replication connection, as a running
// walhook would, until the test ends or the server ends the connection.
func ckHoldSlot(t *testing.T, dsn, slot string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, dsn+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'walhook'"},
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second) // a guard against hanging, not a timing assertion
	for !ckScalar[bool](t, dsn, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot) {
		if time.Now().After(deadline) {
			t.Fatal("slot never became active")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTeardown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	cfg := ckSampleConfig(t, dsn, db)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", cfg); code != 0 {
		t.Fatalf("setup exit %d:\n%s%s", code, out, errOut)
	}
	ckHoldSlot(t, dsn, db)
	objects := func() int64 {
		return ckScalar[int64](t, dsn, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication)`, db)
	}

	// A held slot is a fact, not a problem: a second walhook waits for it.
	out, errOut, code := runCLI(t, ctx, "check", "--config", cfg)
	if code != 0 {
		t.Fatalf("check with the slot held: exit %d\n%s%s", code, out, errOut)
	}
	// At least the holder's walsender is in use; the shared cluster's other
	// tests may run their own, so the count is not exact.
	ckWantLines(t, out, `warn  slot `+db+`: held by the server process with PID \d+ \(the walsender of another walhook\?\)`, `ok    max_wal_senders: [1-9]\d* of \d+ in use, one of them streaming slot `+db+`$`)

	out, errOut, code = runCLI(t, ctx, "teardown", "--config", cfg)
	t.Logf("teardown:\n%s%s", out, errOut)
	if code != 1 || !strings.Contains(errOut, "slot "+`"`+db+`" is held by the server process with PID`) || !strings.Contains(errOut, "--force") {
		t.Fatalf("teardown of an active slot: exit %d, stderr %q; want a refusal naming the holder and --force", code, errOut)
	}
	if n := objects(); n != 2 {
		t.Fatalf("refused teardown left %d of slot and publication, want both", n)
	}

	out, errOut, code = runCLI(t, ctx, "teardown", "--config", cfg, "--force")
	t.Logf("teardown --force:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("teardown --force exit %d", code)
	}
	ckWantLines(t, out, `dropped replication slot `+db+` \(after terminating its holder\)$`, `dropped publication walhook$`)
	if n := objects(); n != 0 {
		t.Fatalf("%d of slot and publication left after teardown --force", n)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'`); n != 1 {
		t.Fatal("teardown without --store dropped the store schema")
	}
	if !strings.Contains(out, "kept the store") || !strings.Contains(out, "--accept-gap") {
		t.Errorf("teardown without --store does not say what a later setup will ask:\n%s", out)
	}

	out, errOut, code = runCLI(t, ctx, "teardown", "--config", cfg, "--store")
	t.Logf("teardown --store:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("teardown --store exit %d", code)
	}
	ckWantLines(t, out,
		`replication slot `+db+` does not exist; nothing to drop$`,
		`publication walhook does not exist; nothing to drop$`,
		`dropped store schema walhook`,
	)
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'`); n != 0 {
		t.Fatal("teardown --store left the store schema")
	}

	out, _, code = runCLI(t, ctx, "teardown", "--config", cfg, "--store")
	if code != 0 {
		t.Fatalf("third teardown exit %d", code)
	}
	ckWantLines(t, out, `store schema walhook does not exist; nothing to drop$`)
}

// A store.schema that names an application schema is never dropped, and
// the refusal comes first: the slot and publication are still there.
func TestTeardownStoreRefusesForeignSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, db := ckSampleDB(t, pgtest.Shared(t))
	sample := ckSampleConfig(t, dsn, db)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", sample); code != 0 {
		t.Fatalf("setup exit %d:\n%s%s", code, out, errOut)
	}
	objects := func() int64 {
		return ckScalar[int64](t, dsn, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication)`, db)
	}
	b, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "public-store.yaml")
	if err := os.WriteFile(cfg, append(b, "\nstore:\n  schema: public\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, ctx, "teardown", "--config", cfg, "--store")
	if code != 1 || !strings.Contains(errOut, "schema public has no schema_version table, so it is not a walhook store; refusing to drop it") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`); n != 9 {
		t.Fatalf("public has %d tables after the refusal, want 9", n)
	}
	if n := objects(); n != 2 || out != "" {
		t.Fatalf("refused teardown --store left %d of slot and publication, want both; it printed:\n%s", n, out)
	}

	// A walhook store that holds a table a rule maps.
	ckExec(t, dsn, `CREATE TABLE walhook.notes (id int PRIMARY KEY)`)
	mapped := writeTempConfig(t, "mapped.yaml", "api: {listen: off}\nsource:\n  dsn: "+dsn+"\n  slot: "+db+`
events:
  - event: note.created
    table: walhook.notes
    operations: [insert]
`)
	out, errOut, code = runCLI(t, ctx, "teardown", "--config", mapped, "--store")
	if code != 1 || !strings.Contains(errOut, "schema walhook holds walhook.notes, which a rule maps; refusing to drop it") {
		t.Fatalf("store holding a mapped table: exit %d, stderr %q", code, errOut)
	}
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_tables WHERE schemaname = 'walhook' AND tablename = 'notes'`); n != 1 {
		t.Fatal("the mapped table was dropped")
	}
	if n := objects(); n != 2 || out != "" {
		t.Fatalf("refused teardown --store left %d of slot and publication, want both; it printed:\n%s", n, out)
	}
}
