package main

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapper"
)

// A real failover to a standby that was behind: walhook delivered changes
// the standby never received, the primary is lost, the standby is
// promoted (timeline 2) and the application writes on it — the same item
// ids again, in a transaction that reuses the old history's xid. check,
// setup and run refuse the fork until setup --accept-gap. The store is
// given old-history events and deliveries with the ids that transaction
// would get without an id epoch (as if the old one had also committed at
// its position): after the accept every change of the new history still
// arrives, under ids of its own, and nothing is sent twice. With the id
// epoch switched off the new history's items 51-80 are lost and this test
// times out.
func TestRunFailoverToAStandbyThatWasBehind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary, store := pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	standby, err := primary.StartStandby()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("standby log:\n%s", standby.TailLog())
		}
		standby.Remove()
	})
	if err := primary.Exec(ctx, "postgres", runItemsSchema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: primary.DSN("postgres"), pool: testPool(t, primary.DSN("postgres")), schema: "walhook", slot: "wh_failover"}
	rc := newRunReceiver(t, runSecret, nil)
	configFor := func(d *runDB) string {
		file, _ := storeRunConfig(t, d, store, rc)
		return file
	}
	file := configFor(db)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	spool := migrateStore(t, store)

	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", func() bool { return rc.Unique() == 50 }, p.diag)
	// The standby has everything so far, then stops receiving; walhook
	// delivers 30 more changes it never gets.
	sb := &runDB{dsn: standby.DSN("postgres"), pool: testPool(t, standby.DSN("postgres")), schema: "walhook", slot: db.slot}
	runWaitFor(t, 30*time.Second, "the standby to replay items 1-50", func() bool {
		var n int
		return sb.pool.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n) == nil && n == 50
	}, nil)
	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	var oldXid int64
	if err := db.pool.QueryRow(ctx, `INSERT INTO items (id, auction_id) SELECT g, 'auc_' || (g % 3) FROM generate_series(51, 80) g
		RETURNING txid_current()`).Scan(&oldXid); err != nil {
		t.Fatal(err)
	}
	runWaitFor(t, 30*time.Second, "80 deliveries", func() bool { return rc.Unique() == 80 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	cursor := db.cursorIn(t, spool)

	// The primary is lost; the standby takes over on timeline 2.
	if err := primary.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := standby.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	sb.pool = testPool(t, standby.DSN("postgres")) // the old one's sessions ended with the stop
	file = configFor(sb)
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check after the failover: exit %d, want 1\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `FAIL  slot `+sb.slot+`: does not exist`,
		`FAIL  cursor: the store's cursor for slot `+sb.slot+` is at `+cursor.String()+` and was found past the server's WAL end`)
	if _, errOut, code := runCLI(t, ctx, "setup", "--config", file); code != 1 || !strings.Contains(errOut, "was found past the server's WAL end") {
		t.Fatalf("setup: exit %d, want 1 with the fork\n%s", code, errOut)
	}
	// The application writes on the new primary before anyone accepts the
	// fork: items 51-80 again, and more, with xids the old history used.
	var newXid int64
	if err := sb.pool.QueryRow(ctx, `INSERT INTO items (id, auction_id) SELECT g, 'auc_' || (g % 3) FROM generate_series(51, 80) g
		RETURNING txid_current()`).Scan(&newXid); err != nil {
		t.Fatal(err)
	}
	t.Logf("items 51-80: xid %d in the old history, %d in the new", oldXid, newXid)
	// Make the collision certain: the store gets events of the old history
	// with the ids this transaction would have without an id epoch (its
	// xid, commit LSN and positions), as if the old history's transaction
	// had committed at the same position too. Without the epoch, the new
	// history's items 51-80 would be taken for replays of them and lost.
	commitLSN := beginFinalLSN(t, sb, uint32(newXid))
	var sys string
	if err := sb.pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&sys); err != nil {
		t.Fatal(err)
	}
	for pos := range 30 {
		ev := mapper.EventID(sys, 0, uint32(newXid), commitLSN, pos, 0)
		if _, err := spool.Exec(ctx, `WITH e AS (INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
				VALUES ($1, 'item.created', 'auction-excellence', now(), '{}'))
			INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts)
				VALUES ($2, $1, 'static:r', 'item.created', 'delivered', 1)`,
			ev, mapper.DeliveryID(mapper.EnvelopeAuctionExcellence, ev, "static:r")); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, errOut, code := runCLI(t, rctx, "run", "--config", file); code != 1 || !strings.Contains(errOut, "was found past the server's WAL end") {
		t.Fatalf("run before the fork is accepted: exit %d, want 1\n%s", code, runTail(errOut, 3000))
	}
	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--accept-gap")
	if code != 0 || !strings.Contains(out, "accepted a fork") {
		t.Fatalf("setup --accept-gap: exit %d\n%s%s", code, out, errOut)
	}
	slot := sb.slotLSN(t) // created by the first setup, before the new history's writes

	p = startRunProc(t, "--config", file)
	insertItems(t, sb, 81, 90)
	runWaitFor(t, 60*time.Second, "the 40 changes of the new history", func() bool { return rc.Unique() == 120 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// setup created the slot on the new primary before it refused, so the
	// new history's items 51-80 are read from it: delivered under ids of
	// the next epoch, next to the old history's 51-80, and nothing twice.
	var epoch int
	var from string
	if err := spool.QueryRow(ctx, `SELECT id_epoch, id_epoch_from::text FROM walhook.cursor WHERE slot = $1`, sb.slot).Scan(&epoch, &from); err != nil {
		t.Fatal(err)
	}
	if epoch != 1 || from != slot.String() {
		t.Fatalf("id epoch %d from %s, want 1 from the slot's %s (created after the promotion)", epoch, from, slot)
	}
	var ids int
	if err := spool.QueryRow(ctx, `SELECT count(DISTINCT id) FROM walhook.events WHERE (data->>'id')::int BETWEEN 51 AND 80`).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	if ids != 60 {
		t.Fatalf("%d events for items 51-80, want 60 (30 of each history)", ids)
	}

	if n := len(rc.deliveries()); n != rc.Unique() {
		t.Fatalf("%d requests for %d deliveries: something was sent twice", n, rc.Unique())
	}
}

// cursorIn reads the store cursor of d's slot in the store pool.
func (d *runDB) cursorIn(t *testing.T, pool *pgxpool.Pool) cdc.LSN {
	t.Helper()
	l, _, ok, err := dispatch.StoredCursor(context.Background(), pool, "walhook", d.slot)
	if err != nil || !ok {
		t.Fatalf("store cursor: %v (found %v)", err, ok)
	}
	return l
}

// beginFinalLSN peeks at d's slot (pgoutput, without consuming it) for the
// Begin message of transaction xid and returns its final LSN: the commit
// LSN walhook's event ids are made from.
func beginFinalLSN(t *testing.T, d *runDB, xid uint32) cdc.LSN {
	t.Helper()
	rows, err := d.pool.Query(context.Background(), `SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', 'walhook')`, d.slot)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		// 'B', final LSN (8), commit time (8), xid (4).
		if len(b) == 21 && b[0] == 'B' && binary.BigEndian.Uint32(b[17:]) == xid {
			return cdc.LSN(binary.BigEndian.Uint64(b[1:9]))
		}
	}
	t.Fatalf("no Begin of transaction %d in slot %s (%v)", xid, d.slot, rows.Err())
	return 0
}
