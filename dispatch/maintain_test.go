package dispatch

import (
	"context"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walhook/walhook/internal/pgtest"
)

// The periodic store work and the status API read the unfinished (and
// skipped, failed) deliveries through their partial indexes, never the
// delivered history kept for retention: their cost must not grow with the
// history. Here 100,000 delivered rows lie next to 5 others, and each
// statement may touch at most a few dozen pages (the history alone is
// well over a thousand). The gauges and the status count right.
func TestMaintenanceReadsOnlyUnfinishedDeliveries(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	b.endpoint(t, "whk_on", "https://on.example/", nil, nil, true)
	b.endpoint(t, "whk_off", "https://off.example/", nil, nil, false)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, delivered_at, created_at, updated_at)
		SELECT 'hist' || i, 'ev' || i, 'whk_on', 'a.b', 'delivered', 1, now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
		FROM generate_series(1, 100000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, locked_by, locked_until, created_at) VALUES
			('p1', 'e1', 'whk_on', 'a.b', 'pending', 0, NULL, NULL, now() - interval '90 seconds'),
			('p2', 'e2', 'whk_on', 'a.b', 'pending', 0, NULL, NULL, now()),
			('l1', 'e3', 'whk_on', 'a.b', 'delivering', 1, 'someone', now() + interval '1 hour', now()),
			('f1', 'e4', 'whk_on', 'a.b', 'failed', 6, NULL, NULL, now()),
			('s1', 'e5', 'whk_off', 'a.b', 'skipped', 0, NULL, NULL, now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `ANALYZE walhook.deliveries`); err != nil {
		t.Fatal(err)
	}

	if err := d.updateGauges(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(d.metrics.pending); got != 3 {
		t.Errorf("walhook_outbox_pending = %v, want 3 (2 pending, 1 being attempted)", got)
	}
	if got := testutil.ToFloat64(d.metrics.oldestPending); got < 90 || got > 3600 {
		t.Errorf("oldest pending age = %vs, want about 90s", got)
	}

	a := NewAdmin(b.pool, "walhook", d)
	st, err := a.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 2 || st.Delivering != 1 || st.Failed != 1 || st.Skipped != 1 || st.OldestPendingAge < 90*time.Second {
		t.Errorf("OutboxStatus = %+v; want 2 pending, 1 delivering, 1 failed, 1 skipped, oldest about 90s", st)
	}

	buffers := regexp.MustCompile(`Buffers: shared hit=(\d+)(?: read=(\d+))?`)
	for name, sql := range map[string]string{
		"gauges":        gaugesSQL,
		"rescue":        rescueSQL,
		"skip disabled": disabledWithPendingSQL,
		"status":        outboxStatusSQL,
	} {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+d.q(sql))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		rows.Close()
		_ = tx.Rollback(ctx) // EXPLAIN ANALYZE ran the updates
		pages := 0
		for _, line := range plan {
			if m := buffers.FindStringSubmatch(line); m != nil {
				hit, _ := strconv.Atoi(m[1])
				read, _ := strconv.Atoi(m[2]) // 0 when absent
				pages = hit + read
				break // the top node's count includes its children's
			}
		}
		if pages == 0 || pages > 60 {
			t.Errorf("%s touched %d pages of a store with 5 unfinished or failed deliveries:\n%s", name, pages, strings.Join(plan, "\n"))
		}
	}
}

// While the store does not answer, walhook_outbox_oldest_pending_seconds
// goes on ageing from the last read: nothing is recorded delivered
// meanwhile. It stayed at the last value read, so an alert on the age of
// the oldest delivery never fired during a store outage, however long.
func TestOldestPendingAgeGrowsWhileTheStoreIsDown(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	b.endpoint(t, "whk_on", "https://on.example/", nil, nil, true)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at)
		VALUES ('p1', 'e1', 'whk_on', 'a.b', 'pending', 2, now() - interval '90 seconds')`); err != nil {
		t.Fatal(err)
	}
	if err := d.updateGauges(ctx); err != nil {
		t.Fatal(err)
	}
	read := testutil.ToFloat64(d.metrics.oldestPending)
	if read < 90 {
		t.Fatalf("oldest pending age = %vs, want about 90s", read)
	}

	// The store goes away: no new session, the pool's ones ended.
	u, err := url.Parse(b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	admin, err := pgxpool.New(ctx, pgtest.Shared(t).DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` ALLOW_CONNECTIONS true`)
	})
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, db); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	time.Sleep(1500 * time.Millisecond)
	if err := d.updateGauges(ctx); err == nil {
		t.Fatal("updateGauges answered with the store refusing connections")
	}
	if got, gone := testutil.ToFloat64(d.metrics.oldestPending), time.Since(down).Seconds(); got < read+gone {
		t.Fatalf("oldest pending age %vs after %.1fs of the store down, read %vs before: want it to go on ageing", got, gone, read)
	}
}

// The outbox counts run at every tick while they are cheap, and with a
// backlog that makes them slow, only once 20 times their cost has passed.
func TestGaugeRefreshSpacing(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if !(gaugeRefresh{}).due(t0) {
		t.Error("never counted: not due")
	}
	cheap := gaugeRefresh{at: t0, took: 3 * time.Millisecond}
	if !cheap.due(t0.Add(100 * time.Millisecond)) {
		t.Error("a 3 ms count is not due at the next 100 ms tick")
	}
	slow := gaugeRefresh{at: t0, took: 1500 * time.Millisecond}
	if slow.due(t0.Add(15 * time.Second)) {
		t.Error("a 1.5 s count is due again after 15 s (10 % of the time)")
	}
	if !slow.due(t0.Add(30 * time.Second)) {
		t.Error("a 1.5 s count is not due after 30 s")
	}
	if !(gaugeRefresh{at: t0, took: time.Minute}).due(t0.Add(5 * time.Minute)) {
		t.Error("a 1 min count is not due after 5 min (the most the counts wait)")
	}
}
