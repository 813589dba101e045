package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
)

// A real failover to a standby that was behind: walhook delivered changes
// the standby never received, the primary is lost, the standby is
// promoted (timeline 2) and the application writes on it — the same item
// ids again, in transactions that reuse the old history's xids. check,
// setup and run refuse the fork until setup --accept-gap; after it every
// change of the new history arrives, under webhook ids of its own, and
// nothing of the old history is sent again.
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
	pool := func(dsn string) *pgxpool.Pool {
		p, err := pgxpool.New(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	db := &runDB{dsn: primary.DSN("postgres"), pool: pool(primary.DSN("postgres")), schema: "walhook", slot: "wh_failover"}
	storeDSN := strings.Replace(store.DSN("postgres"), "postgres@", "postgres:"+runDSNPassword+"@", 1)
	rc := newRunReceiver(t, runSecret, nil)
	configFor := func(d *runDB) string {
		s := d.settings()
		s["store.dsn"] = storeDSN
		s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
		file, _ := runConfig(t, []byte(runItemsConfig), s)
		return file
	}
	file := configFor(db)
	if out, errOut, code := runCLI(t, ctx, "setup", "--config", file); code != 0 {
		t.Fatalf("setup: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := dispatch.Migrate(ctx, pool(store.DSN("postgres")), "walhook"); err != nil {
		t.Fatal(err)
	}

	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 50)
	runWaitFor(t, 30*time.Second, "50 deliveries", func() bool { return rc.Unique() == 50 }, p.diag)
	// The standby has everything so far, then stops receiving; walhook
	// delivers 30 more changes it never gets.
	sb := &runDB{dsn: standby.DSN("postgres"), pool: pool(standby.DSN("postgres")), schema: "walhook", slot: db.slot}
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
	cursor := db.cursorIn(t, store)

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
	sb.pool = pool(standby.DSN("postgres")) // the old one's sessions ended with the stop
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
	if _, errOut, code := runCLI(t, ctx, "run", "--config", file); code != 1 || !strings.Contains(errOut, "was found past the server's WAL end") {
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
	spool := pool(store.DSN("postgres"))
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

// cursorIn reads the store cursor of d's slot in the store cluster c.
func (d *runDB) cursorIn(t *testing.T, c *pgtest.Cluster) cdc.LSN {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	l, _, ok, err := dispatch.StoredCursor(context.Background(), pool, "walhook", d.slot)
	if err != nil || !ok {
		t.Fatalf("store cursor: %v (found %v)", err, ok)
	}
	return l
}
