package main

import (
	"context"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

// The DBA's script (docs/operations.md) grants USAGE and SELECT on the
// rule tables for walhook check only: walhook reads the catalogs, and
// run works without them. But setup looked the rule tables up with
// to_regclass, which needs USAGE on their schema: without it setup
// migrated the store and then failed on "look up partition ancestors:
// permission denied for schema sales", with the DBA's publication in
// place, and check added a bare "FAIL  query: read partition ancestors"
// beside its table line. setup creates the slot, and check has only its
// table line to say.
func TestSetupWithoutUsageOnTheRuleSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	dsn := c.NewDatabase(t)
	db := ckDBName(t, dsn)
	slot := "wh_" + db
	t.Cleanup(func() {
		ckExec(t, dsn, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '`+slot+`' AND NOT active`)
		ckExec(t, dsn, `DROP OWNED BY `+role)
	})
	ckExec(t, dsn, `CREATE SCHEMA sales; CREATE TABLE sales.items (id bigint PRIMARY KEY, n int);
		CREATE SCHEMA walhook AUTHORIZATION `+role)
	s := (&runDB{dsn: dsn, slot: slot}).settings()
	s["source.dsn"] = c.DSNAs(role, db)
	file, _ := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: item.created
    table: sales.items
    operations: [insert]
`), s)

	// Before the publication exists: check's partition lookup.
	out, _, _ := runCLI(t, ctx, "check", "--config", file)
	t.Logf("check:\n%s", out)
	ckWantLines(t, out, `FAIL  table sales\.items: `+role+` has no USAGE on schema sales`)
	ckNoLines(t, out, `FAIL  query: `)

	ckExec(t, dsn, `CREATE PUBLICATION walhook FOR TABLE sales.items WITH (publish_via_partition_root = true)`)
	out, errOut, code := runCLI(t, ctx, "setup", "--config", file)
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("setup exit %d, want 0", code)
	}
	ckWantLines(t, out, `publication walhook already publishes sales\.items`, `created replication slot `+slot)
}
