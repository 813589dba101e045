package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// A store whose server commits asynchronously by default
// (synchronous_commit = off in postgresql.conf, ALTER DATABASE or ALTER
// ROLE: a common tuning of a database that is not walhook's) crashes
// right after walhook stored and confirmed a transaction. The append is
// the durability point (the slot is confirmed after its commit), so it
// must commit synchronously whatever the store's default: before, it
// took the default, the crash lost the last appends with their cursor
// while the slot was already past them, and their events were gone (the
// next term stopped with the gap error).
func TestRunAppendStaysDurableOnAnAsyncStore(t *testing.T) {
	t.Parallel()
	src := pgtest.StartT(t, pgtest.Options{})
	// The WAL writer flushes an asynchronous commit after up to 3 ×
	// wal_writer_delay: the crash below comes well before.
	store := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"synchronous_commit": "off", "wal_writer_delay": "10s"}})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_async"}
	db.exec(t, runItemsSchema)
	rc := newRunReceiver(t, runSecret, nil)
	file, cfg := storeRunConfig(t, db, store, rc)
	db.setup(t, cfg)
	migrateStore(t, store)

	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "the first delivery", func() bool { return rc.Unique() == 1 }, p.diag)
	spool := testPool(t, store.DSN("postgres"))
	var stored string
	runWaitFor(t, 30*time.Second, "the slot to be confirmed to the store's cursor", func() bool {
		if err := spool.QueryRow(context.Background(), `SELECT lsn::text FROM walhook.cursor WHERE slot = 'wh_async'`).Scan(&stored); err != nil {
			return false
		}
		return db.count(t, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wh_async' AND confirmed_flush_lsn >= $1::pg_lsn`, stored) == 1
	}, p.diag)
	insertItems(t, db, 2, 2)
	var slotLSN string
	runWaitFor(t, 30*time.Second, "item 2 stored and the slot confirmed past the cursor before it", func() bool {
		_ = db.pool.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'wh_async'`).Scan(&slotLSN)
		return db.count(t, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'wh_async' AND confirmed_flush_lsn > $1::pg_lsn`, stored) == 1
	}, p.diag)
	spool.Close()
	if err := store.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := store.StartAgain(); err != nil {
		t.Fatal(err)
	}
	spool = testPool(t, store.DSN("postgres"))
	var after string
	if err := spool.QueryRow(context.Background(), `SELECT coalesce((SELECT lsn::text FROM walhook.cursor WHERE slot = 'wh_async'), '0/0')`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if db.count(t, `SELECT count(*) WHERE $1::pg_lsn < $2::pg_lsn`, after, slotLSN) == 1 {
		t.Errorf("the store's cursor came back from its crash at %s, behind the slot's %s confirmed before it: the appends after %s were lost", after, slotLSN, stored)
	}
	insertItems(t, db, 3, 3)
	runWaitFor(t, 60*time.Second, "all 3 items delivered", func() bool {
		if err, exited := p.exited(); exited {
			t.Fatalf("run exited: %v", err)
		}
		return rc.Unique() == 3
	}, p.diag)
	if strings.Contains(p.stderr.String(), "store cursor is behind") {
		t.Errorf("run saw a gap")
	}
}
