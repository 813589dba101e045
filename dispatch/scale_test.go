package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The store at scale: statements run periodically or per API call must
// read O(batch) or O(result) rows, never the delivered history kept for
// retention, whatever plan PostgreSQL picks. pgx prepares every statement
// and PostgreSQL switches a prepared statement to its generic plan after
// five executions (or keeps a plan made while the store was small), so
// these tests run the code on one connection with plan_cache_mode =
// force_generic_plan and count what it read, table by table, from
// pg_stat_user_tables: sequential scans, and rows fetched by them and by
// index scans.

// tableReads is what one table's counters moved by.
type tableReads struct {
	seqScans, seqRows, idxRows int64
}

// scalePool is a one-connection pool on the store of b whose prepared
// statements use generic plans, so counters read on it are its own.
func scalePool(t *testing.T, b *obBundle) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// scaleDispatcher is a Dispatcher on pool (a scalePool).
func scaleDispatcher(t *testing.T, pool *pgxpool.Pool, mod func(*Options)) *Dispatcher {
	t.Helper()
	o := obTestOptions(t)
	if mod != nil {
		mod(&o)
	}
	d, err := New(pool, o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// readsOf runs f (which must use pool, a scalePool) and returns what it
// read per table of the walhook schema.
func readsOf(t *testing.T, pool *pgxpool.Pool, f func()) map[string]tableReads {
	t.Helper()
	snap := func() map[string]tableReads {
		ctx := context.Background()
		// The counters of this backend are flushed when it goes idle
		// after this call; the next statement sees them.
		if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			t.Fatal(err)
		}
		rows, err := pool.Query(ctx, `SELECT relname, seq_scan, coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)
			FROM pg_stat_user_tables WHERE schemaname = 'walhook'`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[string]tableReads{}
		for rows.Next() {
			var name string
			var r tableReads
			if err := rows.Scan(&name, &r.seqScans, &r.seqRows, &r.idxRows); err != nil {
				t.Fatal(err)
			}
			m[name] = r
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	before := snap()
	f()
	after := snap()
	out := map[string]tableReads{}
	for name, a := range after {
		b := before[name]
		out[name] = tableReads{a.seqScans - b.seqScans, a.seqRows - b.seqRows, a.idxRows - b.idxRows}
	}
	return out
}

// Retention deletes expired deliveries, their attempts and their events
// batch by batch. Each batch must find its rows through the indexes
// (deliveries_done, attempts_delivery, events_created_at): a generic plan
// that joined the batch with a sequential scan of attempts read the whole
// attempt log for every 1,000 deliveries (1 s a batch with 1,000,000
// attempts), and one over events read every event each minute.
func TestRetentionReadsThroughIndexes(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.events (id, type, envelope, occurred_at, data, created_at)
		SELECT 'ev' || i, 'a.b', 'ae', now(), '{}', now() - CASE WHEN i <= 1500 THEN interval '10 days' ELSE interval '1 hour' END
		FROM generate_series(1, 20000) i;
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at)
		SELECT 'd' || i, 'ev' || i, 'whk_x', 'a.b', 'delivered', 1,
			now() - CASE WHEN i <= 1500 THEN interval '10 days' ELSE interval '1 hour' END,
			now() - CASE WHEN i <= 1500 THEN interval '10 days' ELSE interval '1 hour' END
		FROM generate_series(1, 20000) i;
		INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration_ms, status_code)
		SELECT 'd' || i, 1, now(), 1, 200 FROM generate_series(1, 20000) i;
		ANALYZE walhook.events; ANALYZE walhook.deliveries; ANALYZE walhook.attempts`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	d := scaleDispatcher(t, pool, func(o *Options) { o.Retention = 7 * 24 * time.Hour })
	var n int64
	reads := readsOf(t, pool, func() {
		var err error
		if n, _, err = d.deleteExpired(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	})
	if n != 2*1500 {
		t.Errorf("retention deleted %d deliveries and events, want 1,500 of each", n)
	}
	for _, table := range []string{"deliveries", "attempts", "events"} {
		if r := reads[table]; r.seqScans != 0 {
			t.Errorf("retention scanned %s sequentially %d times (%d rows read) to delete 1,500 expired of 20,000", table, r.seqScans, r.seqRows)
		}
	}
}

// Recover re-queues an endpoint's failed and skipped deliveries: it must
// find them through their partial indexes (deliveries_endpoint_failed,
// deliveries_skipped), not read the endpoint's delivered history. Through
// (endpoint_id, created_at) a recover of an endpoint with 1,600,000
// delivered rows read all of them (1.4 s) to re-queue none, and the
// custom plan scanned the whole table (4,000,000 rows).
func TestRecoverReadsOnlyFailedAndSkipped(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	b.endpoint(t, "whk_big", "https://big.example/", nil, nil, true)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at)
		SELECT 'd' || i, 'ev' || i, 'whk_big', 'a.b',
			CASE WHEN i % 5000 = 0 THEN 'failed' WHEN i % 5000 = 1 THEN 'skipped' ELSE 'delivered' END, 1,
			now() - interval '1 hour', now() - interval '1 hour'
		FROM generate_series(1, 20000) i;
		ANALYZE walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	a := NewAdmin(pool, "walhook", scaleDispatcher(t, pool, nil))
	var n int
	reads := readsOf(t, pool, func() {
		var err error
		if n, err = a.Recover(ctx, "whk_big", time.Now().Add(-24*time.Hour)); err != nil {
			t.Fatal(err)
		}
	})
	if n != 8 {
		t.Errorf("Recover re-queued %d deliveries, want the 8 failed or skipped", n)
	}
	if r := reads["deliveries"]; r.seqScans != 0 || r.idxRows > 100 {
		t.Errorf("Recover of 8 deliveries read deliveries with %d sequential scans (%d rows) and %d rows through indexes; the endpoint's history is 20,000 rows",
			r.seqScans, r.seqRows, r.idxRows)
	}
}

// A page of an endpoint's deliveries reads about a page of rows, however
// deep it is and whatever it filters on. The optional filters were
// written as ($n IS NULL OR …) in one statement: its generic plan could
// use none of them as an index condition, so a page 1,000,000 rows deep
// read those 1,000,000 rows first, and a status filter read the whole
// history to find the few failed ones.
func TestListDeliveriesReadsAPage(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	b.endpoint(t, "whk_big", "https://big.example/", nil, nil, true)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at)
		SELECT 'd' || lpad(i::text, 5, '0'), 'ev' || i, 'whk_big', 'a.b',
			CASE WHEN i % 5000 = 0 THEN 'failed' ELSE 'delivered' END, 1,
			now() - i * interval '1 second', now() - i * interval '1 second'
		FROM generate_series(1, 20000) i;
		ANALYZE walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	a := NewAdmin(pool, "walhook", scaleDispatcher(t, pool, nil))
	// The cursor of a page that ends 19,000 rows deep.
	var deep time.Time
	if err := b.pool.QueryRow(ctx, `SELECT created_at FROM walhook.deliveries WHERE id = 'd19000'`).Scan(&deep); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    DeliveryFilter
		want int
	}{
		{"first page", DeliveryFilter{Limit: 50}, 50},
		{"a page 19,000 deep", DeliveryFilter{Limit: 50, Cursor: encodeCursor(deep, "d19000")}, 50},
		{"failed", DeliveryFilter{Status: "failed", Limit: 50}, 4},
		{"failed, since", DeliveryFilter{Status: "failed", Since: deep, Limit: 50}, 3},
		{"a window", DeliveryFilter{Since: deep, Until: deep.Add(100 * time.Second), Limit: 50}, 50},
	} {
		// Several times each: the plan of the sixth may differ from the
		// first five's (plan_cache_mode here forces the generic one from
		// the first).
		for range 6 {
			var got []Delivery
			reads := readsOf(t, pool, func() {
				var err error
				if got, _, err = a.ListDeliveries(ctx, "whk_big", c.f); err != nil {
					t.Fatal(err)
				}
			})
			if len(got) != c.want {
				t.Fatalf("%s: %d deliveries, want %d", c.name, len(got), c.want)
			}
			if r := reads["deliveries"]; r.seqScans != 0 || r.idxRows > 200 {
				t.Fatalf("%s: a page of %d read deliveries with %d sequential scans (%d rows) and %d rows through indexes, of 20,000",
					c.name, len(got), r.seqScans, r.seqRows, r.idxRows)
			}
		}
	}
}

// The outbox gauges (every maintenance tick) and the status API count the
// unfinished deliveries through their partial indexes, whatever share of
// the store they are: with statistics that showed 10 % of 4,000,000 rows
// pending (a dead endpoint's backlog), both were planned as a parallel
// sequential scan of the whole table, every tick (0.4 s) and every status
// request (0.9-2 s). The status request also read the pending rows three
// times (count, count of those retried, oldest).
func TestOutboxCountsReadOnlyUnfinished(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	b.endpoint(t, "whk_dead", "https://dead.example/", nil, nil, true)
	ctx := context.Background()
	const pending, failed, skipped = 12000, 200, 100
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at)
		SELECT 'd' || i, 'ev' || i, 'whk_dead', 'a.b',
			CASE WHEN i <= $1 THEN 'pending' WHEN i <= $1 + $2 THEN 'failed' WHEN i <= $1 + $2 + $3 THEN 'skipped' ELSE 'delivered' END,
			3, now() - interval '1 hour', now() - interval '1 hour'
		FROM generate_series(1, 20000) i`, pending, failed, skipped); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, locked_by, locked_until)
		VALUES ('l1', 'e1', 'whk_dead', 'a.b', 'delivering', 1, 'someone', now() + interval '1 hour');
		ANALYZE walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	d := scaleDispatcher(t, pool, nil)
	a := NewAdmin(pool, "walhook", d)
	for range 6 {
		reads := readsOf(t, pool, func() {
			if err := d.updateGauges(ctx); err != nil {
				t.Fatal(err)
			}
		})
		if r := reads["deliveries"]; r.seqScans != 0 || r.idxRows > pending+100 {
			t.Fatalf("the gauges read deliveries with %d sequential scans (%d rows) and %d rows through indexes; %d are pending of 20,001",
				r.seqScans, r.seqRows, r.idxRows, pending)
		}
		var st OutboxStatus
		reads = readsOf(t, pool, func() {
			var err error
			if st, err = a.OutboxStatus(ctx); err != nil {
				t.Fatal(err)
			}
		})
		if st.Pending != pending || st.Failing != pending || st.Failed != failed || st.Skipped != skipped || st.Delivering != 1 {
			t.Fatalf("OutboxStatus = %+v", st)
		}
		if r := reads["deliveries"]; r.seqScans != 0 || r.idxRows > pending+failed+skipped+100 {
			t.Fatalf("the status read deliveries with %d sequential scans (%d rows) and %d rows through indexes; %d are pending, failed or skipped of 20,001",
				r.seqScans, r.seqRows, r.idxRows, pending+failed+skipped)
		}
	}
}

// Events past retention that deliveries still refer to (a dead
// endpoint's failed or skipped backlog, kept for retention from when it
// failed, not from when the event came) are not read again by every
// retention pass: the pass walked every event older than retention and
// probed its deliveries, so it read the whole backlog's events every
// minute (100,000 of them: 0.15 s through the index, 0.8 s when the
// plan walked the primary key). An event whose last delivery expires
// goes with it, and an old event without deliveries is still found.
func TestRetentionDoesNotRereadReferencedEvents(t *testing.T) {
	t.Parallel()
	_, b := obSetup(t, nil)
	ctx := context.Background()
	const referenced = 3000
	if _, err := b.pool.Exec(ctx, `
		INSERT INTO walhook.events (id, type, envelope, occurred_at, data, created_at)
		SELECT 'ev' || i, 'a.b', 'ae', now(), '{}', now() - interval '10 days' + i * interval '1 second'
		FROM generate_series(1, 3102) i;
		-- Failed a day ago, kept for retention from then.
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at)
		SELECT 'dead' || i, 'ev' || i, 'whk_dead', 'a.b', 'failed', 6, now() - interval '10 days', now() - interval '1 day'
		FROM generate_series(1, 3000) i;
		-- Expired, with their events: 3001-3100. 3101 and 3102 have no delivery.
		INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at)
		SELECT 'old' || i, 'ev' || i, 'whk_x', 'a.b', 'delivered', 1, now() - interval '10 days', now() - interval '9 days'
		FROM generate_series(3001, 3100) i;
		ANALYZE walhook.events; ANALYZE walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	pool := scalePool(t, b)
	d := scaleDispatcher(t, pool, func(o *Options) { o.Retention = 7 * 24 * time.Hour })
	pass := func() (int64, tableReads) {
		var n int64
		reads := readsOf(t, pool, func() {
			var err error
			if n, _, err = d.deleteExpired(ctx, time.Minute); err != nil {
				t.Fatal(err)
			}
		})
		return n, reads["events"]
	}
	if n, _ := pass(); n != 100+102 {
		t.Errorf("the first pass deleted %d rows, want 100 deliveries and 102 events", n)
	}
	if c := b.count(t, `SELECT count(*) FROM walhook.events`); c != referenced {
		t.Errorf("%d events left, want the %d still referred to", c, referenced)
	}
	for range 3 {
		n, r := pass()
		if n != 0 {
			t.Errorf("a later pass deleted %d rows, want none", n)
		}
		if r.seqScans != 0 || r.idxRows > 100 {
			t.Fatalf("a pass with nothing to delete read events with %d sequential scans (%d rows) and %d rows through indexes; %d old events are still referred to",
				r.seqScans, r.seqRows, r.idxRows, referenced)
		}
	}
	// The backlog expires: its events go with it.
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.deliveries SET updated_at = now() - interval '8 days'`); err != nil {
		t.Fatal(err)
	}
	if n, _ := pass(); n != 2*referenced {
		t.Errorf("deleted %d rows once the backlog expired, want %d deliveries and their events", n, referenced)
	}
	if c := b.count(t, `SELECT count(*) FROM walhook.events`); c != 0 {
		t.Errorf("%d events left, want none", c)
	}
}
