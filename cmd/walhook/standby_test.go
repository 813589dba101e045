package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
)

// source.dsn or store.dsn reaching a hot standby: check, setup, run and
// teardown say so with the fix (point it at the primary) and change
// nothing. Before, check and run told to run walhook setup (a standby
// lists none of the primary's slots), setup migrated the store and then
// failed on "read-only transaction", teardown reported "nothing to drop"
// while the primary's slot kept its WAL, and a read-only store passed
// check and made run exit 2 blaming the config's endpoints.
func TestStandbySourceOrStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.StartT(t, pgtest.Options{})
	if err := primary.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	standby, err := primary.StartStandby()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Remove() })
	rc := newRunReceiver(t, runSecret, nil)
	p := &runDB{dsn: primary.DSN("postgres"), pool: testPool(t, primary.DSN("postgres")), schema: "walhook", slot: "wh_standby"}
	config := func(source, store string) string {
		s := p.settings()
		s["source.dsn"], s["store.dsn"] = source, store
		s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
		file, _ := runConfig(t, []byte(runItemsConfig), s)
		return file
	}
	cli := func(args ...string) (string, string, int) {
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		out, errOut, code := runCLI(t, c, args...)
		t.Logf("walhook %s: exit %d\n%s%s", args[0], code, out, runTail(errOut, 2000))
		return out, errOut, code
	}
	const sourceStandby = `the source server is a standby \(in recovery\): .* — fix: point source\.dsn at the primary`
	const storeReadOnly = `the store is read-only \(a standby, or default_transaction_read_only is on\).* — fix: point store\.dsn at the primary`
	nothingOnPrimary := func(what string) {
		t.Helper()
		if n := p.count(t, `SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)
			+ (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook')`); n != 0 {
			t.Fatalf("%s left %d objects on the primary", what, n)
		}
	}

	// The source is the standby (the store the primary).
	file := config(standby.DSN("postgres"), primary.DSN("postgres"))
	out, _, code := cli("check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  server: PostgreSQL .* is a standby \(in recovery\): .* — fix: point source\.dsn at the primary`,
		`not ready: \d problem`)
	ckNoLines(t, out, `FAIL  (slot|publication).*fix: walhook setup`)
	_, errOut, code := cli("setup", "--config", file)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: `+sourceStandby)
	nothingOnPrimary("setup against a standby")
	_, errOut, code = cli("run", "--config", file)
	if code != 1 {
		t.Fatalf("run exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `source .*: `+sourceStandby)
	nothingOnPrimary("run against a standby")

	// The store is the standby (the source the primary), migrated on the
	// primary and replayed.
	if _, err := dispatch.Migrate(ctx, p.pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	sb := testPool(t, standby.DSN("postgres"))
	runWaitFor(t, 30*time.Second, "the standby to replay the store", func() bool {
		var ok bool
		return sb.QueryRow(ctx, `SELECT to_regclass('walhook.schema_version') IS NOT NULL`).Scan(&ok) == nil && ok
	}, nil)
	file = config(primary.DSN("postgres"), standby.DSN("postgres"))
	out, _, code = cli("check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  store: `+storeReadOnly)
	_, errOut, code = cli("setup", "--config", file)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: store .*: `+storeReadOnly)
	if n := p.count(t, `SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)`); n != 0 {
		t.Fatalf("setup with a read-only store made %d objects on the source", n)
	}
	_, errOut, code = cli("run", "--config", file)
	if code != 1 {
		t.Fatalf("run exit %d, want 1 (the config is fine)", code)
	}
	ckWantLines(t, errOut, `store .*: `+storeReadOnly)

	// teardown against the standby must not report the primary's slot
	// gone.
	if _, _, code := cli("setup", "--config", config(primary.DSN("postgres"), primary.DSN("postgres"))); code != 0 {
		t.Fatalf("setup on the primary exit %d", code)
	}
	_, errOut, code = cli("teardown", "--config", config(standby.DSN("postgres"), primary.DSN("postgres")))
	if code != 1 {
		t.Fatalf("teardown exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `teardown: `+sourceStandby)
	if n := p.count(t, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, p.slot); n != 1 {
		t.Fatal("teardown against the standby dropped the primary's slot?")
	}
	if strings.Contains(errOut, "nothing to drop") {
		t.Fatal("teardown against the standby said nothing to drop")
	}
}
