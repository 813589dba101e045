package main

import (
	"context"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

// The DBA's publication also publishes a table no rule maps (it serves
// another consumer too, or a rule was removed): check only warns (its
// changes are decoded and ignored) and run works, but setup refused the
// whole config ("publishes public.audit, which no rule maps … walhook
// cannot change it") and created no slot. setup goes on, says it with
// the statement for the DBA, and creates the slot.
func TestSetupDBAPublicationWithAnExtraTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	dsn := c.NewDatabase(t)
	db := ckDBName(t, dsn)
	t.Cleanup(func() {
		ckExec(t, dsn, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '`+"wh_"+db+`' AND NOT active`)
		ckExec(t, dsn, `DROP OWNED BY `+role)
	})
	ckExec(t, dsn, runItemsSchema+`CREATE TABLE audit (id bigint PRIMARY KEY);
		GRANT USAGE ON SCHEMA public TO `+role+`; GRANT SELECT ON items TO `+role+`;
		CREATE PUBLICATION walhook FOR TABLE items, audit WITH (publish_via_partition_root = true);
		CREATE SCHEMA walhook AUTHORIZATION `+role)
	s := (&runDB{dsn: dsn, slot: "wh_" + db}).settings()
	s["source.dsn"] = c.DSNAs(role, db)
	file, _ := runConfig(t, []byte(runItemsConfig), s)

	out, errOut, code := runCLI(t, ctx, "setup", "--config", file)
	t.Logf("setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("setup exit %d, want 0", code)
	}
	ckWantLines(t, out, `warn: publication walhook also publishes public\.audit, which no rule maps \(decoded and ignored\); it belongs to role postgres, .*ALTER PUBLICATION "walhook" SET TABLE "public"\."items";`,
		`created replication slot wh_`+db)
	if n := ckScalar[int64](t, dsn, `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook'`); n != 2 {
		t.Fatalf("setup changed the DBA's publication: %d tables", n)
	}
	out, errOut, code = runCLI(t, ctx, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check after setup exit %d:\n%s%s", code, out, errOut)
	}

	// walhook's own store tables in it (the store in the source
	// database) are still refused, as check fails them.
	ckExec(t, dsn, `ALTER PUBLICATION walhook ADD TABLE walhook.events`)
	out, errOut, code = runCLI(t, ctx, "setup", "--config", file)
	t.Logf("setup with a store table published:\n%s%s", out, errOut)
	if code != 1 {
		t.Fatalf("setup exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `setup: publication walhook publishes public\.audit, walhook\.events, which no rule maps; it belongs to role postgres`)
}
