package dispatch

import (
	"context"
	"testing"
	"time"
)

// Review: an admin rotates (or PUTs, or deletes) endpoint X while a large
// recover of X runs. RotateSecret takes the endpoints lock
// (lockEndpointsSQL: endpoints_version FOR UPDATE) first and then waits
// for X's row, which the recover holds FOR SHARE; every Append waits for
// the endpoints lock meanwhile, so no event for any endpoint is stored
// (nor the slot confirmed, nor anything handed to a worker) until the
// recover of X ends.
func TestReviewRotateDuringRecoverStallsAppends(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	x := b.endpoint(t, "whk_x", "http://127.0.0.1:1/", []string{"x.only"}, nil, true)
	b.endpoint(t, "whk_y", "http://127.0.0.1:1/", []string{"a.b"}, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.events (id, type, envelope, occurred_at, data) VALUES ('old','x.only','sns',now(),'{}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, next_attempt_at)
		SELECT 'old-'||g, 'old', $1, 'x.only', 'failed', 6, now() + interval '1 day' FROM generate_series(1, 300000) g`, x); err != nil {
		t.Fatal(err)
	}
	recovered := make(chan time.Time, 1)
	go func() {
		if _, err := a.Recover(ctx, x, time.Now().Add(-time.Hour)); err != nil {
			t.Error(err)
		}
		recovered <- time.Now()
	}()
	obWaitFor(t, "the recover running", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%status IN (''failed'', ''skipped'')%' AND query NOT LIKE '%pg_stat_activity%'`) == 1
	})
	go func() {
		if _, _, err := a.RotateSecret(ctx, x, time.Hour); err != nil {
			t.Error(err)
		}
	}()
	waitForLockWait(t, b.pool, "FOR UPDATE", nil)
	start := time.Now()
	obAppend(t, d, 10, obEvent("a.b", "")) // for Y only
	took := time.Since(start)
	at := <-recovered
	if took > time.Second {
		t.Fatalf("an append of one event for endpoint Y took %s: it waited for the rotation of X, which waited for X's recover (the append returned %s after the recover)",
			took.Round(time.Millisecond), time.Since(at).Round(time.Millisecond))
	}
}
