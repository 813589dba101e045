package main

import (
	"regexp"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/pgtest"
)

// walhook only reads the source, so a source role the DBA made read-only
// (default_transaction_read_only, the publication the DBA's) works, with
// the store in a database of its own. The fix of the standby refusal
// told to add target_session_attrs=read-write to source.dsn, which makes
// every connection of such a role fail ("read only connection"): the
// attribute that picks the primary is target_session_attrs=primary. With
// the fix's attribute in source.dsn, check, setup and run work.
func TestReadOnlySourceRoleFollowsTheStandbyFix(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	src, store := c.NewDatabase(t), c.NewDatabase(t)
	srcDB, storeDB := ckDBName(t, src), ckDBName(t, store)
	ckExec(t, src, runItemsSchema+`
		GRANT USAGE ON SCHEMA public TO `+role+`; GRANT SELECT ON items TO `+role+`;
		CREATE PUBLICATION walhook FOR TABLE items WITH (publish_via_partition_root = true);
		ALTER ROLE `+role+` IN DATABASE `+srcDB+` SET default_transaction_read_only = on`)
	ckExec(t, store, `CREATE SCHEMA walhook AUTHORIZATION `+role)
	db := &runDB{dsn: src, pool: testPool(t, src), schema: "walhook", slot: "wh_" + srcDB}
	t.Cleanup(func() {
		ckExec(t, src, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '`+db.slot+`' AND NOT active`)
		ckExec(t, src, `DROP OWNED BY `+role)
		ckExec(t, store, `DROP OWNED BY `+role)
	})
	attr := regexp.MustCompile(`target_session_attrs=[a-z-]+`).FindString(cdc.StandbyFix)
	if attr == "" {
		t.Fatalf("the standby fix names no target_session_attrs: %s", cdc.StandbyFix)
	}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["source.dsn"] = c.DSNAs(role, srcDB) + "&" + attr
	s["store.dsn"] = c.DSNAs(role, storeDB)
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, _ := runConfig(t, []byte(runItemsConfig), s)

	if out, _, code := pubCLI(t, "setup", "--config", file); code != 0 {
		t.Fatalf("setup with source.dsn …?%s exit %d:\n%s", attr, code, out)
	}
	if out, _, code := pubCLI(t, "check", "--config", file); code != 0 {
		t.Fatalf("check after setup exit %d:\n%s", code, out)
	}
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "the delivery of the insert", func() bool {
		_, stopped := p.exited()
		return stopped || rc.Unique() == 1
	}, p.diag)
	if err, stopped := p.exited(); stopped {
		t.Fatalf("walhook run stopped: %v", err)
	}
}

// The same read-only role without store.dsn: the store is then the
// source database, where walhook cannot write its outbox, and check, setup
// and run refuse it, rightly. Their fix said only "point store.dsn at the
// primary … or turn default_transaction_read_only off", though store.dsn
// was not set and the source is the primary: a role the DBA made
// read-only on purpose needs a store elsewhere, and the fix says so.
func TestReadOnlySourceRoleWithoutStoreDSN(t *testing.T) {
	t.Parallel()
	c := pgtest.Shared(t)
	role := ckReplicationRole(t, c)
	src := c.NewDatabase(t)
	srcDB := ckDBName(t, src)
	ckExec(t, src, runItemsSchema+`
		GRANT USAGE ON SCHEMA public TO `+role+`; GRANT SELECT ON items TO `+role+`;
		ALTER ROLE `+role+` IN DATABASE `+srcDB+` SET default_transaction_read_only = on`)
	t.Cleanup(func() { ckExec(t, src, `DROP OWNED BY `+role) })
	s := (&runDB{dsn: src, slot: "wh_" + srcDB}).settings()
	s["source.dsn"] = c.DSNAs(role, srcDB)
	file, _ := runConfig(t, []byte(runItemsConfig), s)
	const fix = `fix: the store is the source database \(store\.dsn is source\.dsn\), which is read-only for this role: set store\.dsn to a database walhook may write \(walhook only reads the source\), or point store\.dsn at the primary`
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  store: the store is read-only .* — `+fix)
	_, errOut, code := pubCLI(t, "run", "--config", file)
	if code != 1 {
		t.Fatalf("run exit %d, want 1", code)
	}
	ckWantLines(t, errOut, `store .*: the store is read-only .* — `+fix)
}
