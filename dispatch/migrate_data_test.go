package dispatch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// A store that an older walhook (store version 1, and 5) has been using, with
// deliveries in every state, is migrated to the latest version and used
// by this one: what was due is delivered under its own id, a lease its
// dead process held is rescued, a lease a still-running old process holds
// is left alone until it runs out, a retry waits for its time, the
// pending deliveries of an endpoint disabled by hand are skipped, the
// cursor reads back, and the fan-out follows the endpoints as they are
// and as they change after the upgrade.
func TestStoreMigratedWithDataKeepsDelivering(t *testing.T) {
	t.Parallel()
	for _, from := range []int{1, 5} {
		t.Run(fmt.Sprintf("from version %d", from), func(t *testing.T) {
			t.Parallel()
			storeMigratedWithDataKeepsDelivering(t, from)
		})
	}
}

func storeMigratedWithDataKeepsDelivering(t *testing.T, from int) {
	ctx := context.Background()
	pool := newStorePool(t)
	if _, err := migrateTo(ctx, pool, "walhook", from); err != nil {
		t.Fatal(err)
	}
	rc := obNewReceiver(t, nil)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO walhook.endpoints (id, static, url, secret, active, disabled_reason, disabled_at) VALUES
		('static:r', true, $1, $2, true, NULL, NULL),
		('whk_on', false, $1, $2, true, NULL, NULL),
		('whk_off', false, $1, $2, false, 'disabled by admin', now())`, rc.URL, obSecret)
	exec(`INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
		SELECT 'ev' || g, 'item.created', 'auction-excellence', now(), ('{"n":' || g || '}')::json FROM generate_series(1, 6) g`)
	exec(`INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, next_attempt_at, locked_by, locked_until) VALUES
		('d-due',     'ev1', 'whk_on',   'item.created', 'pending',    0, now() - interval '1 s', NULL,    NULL),
		('d-retry',   'ev2', 'whk_on',   'item.created', 'pending',    1, now() + interval '1 h', NULL,    NULL),
		('d-dead',    'ev3', 'static:r', 'item.created', 'delivering', 1, now(),                'old-1', now() - interval '1 s'),
		('d-held',    'ev4', 'static:r', 'item.created', 'delivering', 1, now(),                'old-2', now() + interval '2 s'),
		('d-off',     'ev5', 'whk_off',  'item.created', 'pending',    0, now() - interval '1 s', NULL,    NULL),
		('d-done',    'ev6', 'whk_on',   'item.created', 'delivered',  1, now(),                NULL,    NULL)`)
	exec(`INSERT INTO walhook.cursor (slot, system_id, lsn) VALUES ('slot', 'sys', '0/1000')`)

	applied, err := Migrate(ctx, pool, "walhook")
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != LatestSchemaVersion()-from {
		t.Fatalf("Migrate applied %v, want the migrations after %d", applied, from)
	}
	if err := CheckSchema(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}

	b := &obBundle{pool: pool}
	d := b.dispatcher(t, func(o *Options) { o.Lease = 10 * time.Second })
	heldUntil := time.Now().Add(2 * time.Second)
	obRun(t, d)
	status := func(id string) string {
		var s string
		if err := pool.QueryRow(ctx, `SELECT status FROM walhook.deliveries WHERE id = $1`, id).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	obWaitFor(t, "the due, dead and held deliveries delivered, the disabled endpoint's skipped", func() bool {
		return status("d-due") == "delivered" && status("d-dead") == "delivered" && status("d-held") == "delivered" && status("d-off") == "skipped"
	})
	var ids []string
	for _, r := range rc.requests() {
		ids = append(ids, r.Header.Get("X-Webhook-Id"))
		if r.Header.Get("X-Webhook-Id") == "d-held" && r.At.Before(heldUntil) {
			t.Errorf("d-held sent at %s, before the old process's lease ran out at %s", r.At, heldUntil)
		}
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"d-dead", "d-due", "d-held"}) {
		t.Fatalf("receiver got %v, want d-dead, d-due, d-held once each", ids)
	}
	if s := status("d-retry"); s != "pending" {
		t.Errorf("d-retry is %s before its time, want pending", s)
	}

	lsn, sys, ok, err := d.Cursor(ctx, "slot")
	if err != nil || !ok || lsn != 0x1000 || sys != "sys" {
		t.Fatalf("Cursor = %s, %q, %v, %v; want 0/1000 of sys", lsn, sys, ok, err)
	}
	if epoch, _, err := d.IDEpoch(ctx, "slot"); err != nil || epoch != 0 {
		t.Fatalf("IDEpoch = %d, %v; want 0", epoch, err)
	}

	// New events fan out to the active endpoints; whk_off gets a skipped
	// row. Enabled again by hand, it gets the next event.
	ev := obEvent("item.created", "")
	obAppend(t, d, 0x2000, ev)
	fanout := func(evID string) map[string]string {
		rows, err := pool.Query(ctx, `SELECT endpoint_id, status FROM walhook.deliveries WHERE event_id = $1`, evID)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for rows.Next() {
			var ep, st string
			if err := rows.Scan(&ep, &st); err != nil {
				t.Fatal(err)
			}
			m[ep] = st
		}
		return m
	}
	if m := fanout(ev.ID); len(m) != 3 || m["whk_off"] != "skipped" {
		t.Fatalf("fan-out after the upgrade = %v, want static:r, whk_on and whk_off skipped", m)
	}
	exec(`UPDATE walhook.endpoints SET active = true, disabled_reason = NULL, disabled_at = NULL WHERE id = 'whk_off'`)
	ev2 := obEvent("item.created", "")
	obAppend(t, d, 0x3000, ev2)
	if m := fanout(ev2.ID); len(m) != 3 || m["whk_off"] == "skipped" {
		t.Fatalf("fan-out after whk_off was enabled by hand = %v, want it not skipped", m)
	}
	obWaitFor(t, "the new events delivered", func() bool { return rc.n() == 3+2+3 })
}

// The rollback of docs/operations.md (Upgrading) takes a store at version
// 8 back to exactly what migrations 1 to 7 make (its first step) and 1 to
// 5 make, drops what deleted
// endpoints still left, and the store migrates forward again. After an
// accepted fork it refuses and changes nothing.
func TestOperationsRollbackSQLGivesTheVersion5Store(t *testing.T) {
	t.Parallel()
	if LatestSchemaVersion() != 8 {
		t.Skip("the documented rollback starts at store version 8")
	}
	ctx := context.Background()
	md, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	rollback := fencedBlock(t, md, "sql", "7 -> 6")
	// Its first step alone gives the version-7 store.
	step8 := rollback[strings.Index(rollback, "-- 8 -> 7"):strings.Index(rollback, "-- 7 -> 6")]
	exec := func(pool *pgxpool.Pool, sql string) error {
		_, err := pool.Exec(ctx, sql)
		return err
	}
	shape := func(pool *pgxpool.Pool) string {
		var s string
		if err := pool.QueryRow(ctx, `SELECT string_agg(x, E'\n' ORDER BY x) FROM (
			SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
				FROM information_schema.columns WHERE table_schema = 'walhook'
			UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'walhook'
			UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'walhook'::regnamespace
			UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
				WHERE c.relnamespace = 'walhook'::regnamespace AND NOT t.tgisinternal
			UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'walhook'::regnamespace
			UNION ALL SELECT 'version ' || version FROM walhook.schema_version) s(x)`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}

	want7, at8 := newStorePool(t), newStorePool(t)
	if _, err := migrateTo(ctx, want7, "walhook", 7); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, at8, "walhook"); err != nil {
		t.Fatal(err)
	}
	if err := exec(at8, "BEGIN;\n"+step8+"COMMIT;"); err != nil {
		t.Fatalf("rollback 8 -> 7: %v", err)
	}
	if got, w := shape(at8), shape(want7); got != w {
		t.Fatalf("store after the rollback to 7:\n%s\n\nwant (migrations 1 to 7):\n%s", got, w)
	}
	var body7, body string
	for p, b := range map[*pgxpool.Pool]*string{want7: &body7, at8: &body} {
		if err := p.QueryRow(ctx, `SELECT prosrc FROM pg_proc WHERE proname = 'endpoints_changed'`).Scan(b); err != nil {
			t.Fatal(err)
		}
	}
	if body7 = strings.ReplaceAll(body7, `"walhook".`, "walhook."); body != body7 {
		t.Fatalf("endpoints_changed after the rollback to 7:\n%s\nwant:\n%s", body, body7)
	}

	want := newStorePool(t)
	if _, err := migrateTo(ctx, want, "walhook", 5); err != nil {
		t.Fatal(err)
	}
	pool := newStorePool(t)
	if _, err := Migrate(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	if err := exec(pool, `
		INSERT INTO walhook.endpoints (id, url, secret) VALUES ('whk_kept', 'https://example.com/', 'whsec_x');
		INSERT INTO walhook.events (id, type, envelope, occurred_at, data) VALUES ('ev', 'item.created', 'auction-excellence', now(), '{}');
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type) VALUES
			('d-kept', 'ev', 'whk_kept', 'item.created'), ('d-gone', 'ev', 'whk_gone', 'item.created');
		INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration_ms) VALUES ('d-gone', 1, now(), 1);
		INSERT INTO walhook.endpoints_deleted (id) VALUES ('whk_gone');
		INSERT INTO walhook.cursor (slot, system_id, lsn) VALUES ('slot', 'sys', '0/1000')`); err != nil {
		t.Fatal(err)
	}

	// After an accepted fork: refused, nothing changed.
	if err := exec(pool, `UPDATE walhook.cursor SET id_epoch = 1`); err != nil {
		t.Fatal(err)
	}
	before := shape(pool)
	if err := exec(pool, rollback); err == nil || !strings.Contains(err.Error(), "a fork was accepted") {
		t.Fatalf("rollback after an accepted fork = %v, want it refused", err)
	}
	if err := exec(pool, `ROLLBACK; UPDATE walhook.cursor SET id_epoch = 0`); err != nil {
		t.Fatal(err)
	}
	if got := shape(pool); got != before {
		t.Fatalf("a refused rollback changed the store:\n%s\nwas:\n%s", got, before)
	}

	if err := exec(pool, rollback); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if got, w := shape(pool), shape(want); got != w {
		t.Fatalf("store after the rollback:\n%s\n\nwant (migrations 1 to 5):\n%s", got, w)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM walhook.deliveries WHERE id = 'd-gone') + (SELECT count(*) FROM walhook.attempts)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("rows of the deleted endpoint after the rollback: %d, %v", n, err)
	}
	if applied, err := Migrate(ctx, pool, "walhook"); err != nil || len(applied) != 3 {
		t.Fatalf("Migrate after the rollback = %v, %v; want 006, 007 and 008 applied again", applied, err)
	}
}
