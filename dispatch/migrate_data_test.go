package dispatch

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/pgtest"
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
	pool, err := pgxpool.New(ctx, pgtest.Shared(t).NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
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
