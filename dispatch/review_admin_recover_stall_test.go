package dispatch

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// Review: POST recover on endpoint X with a large backlog of failed
// deliveries (the usual step after an outage) while X has live traffic.
// Recover holds X's endpoint row FOR SHARE for as long as its UPDATE of
// the backlog takes; the recorder's batch that marks X's fresh 2xx
// delivered wants X's row FOR NO KEY UPDATE and waits, and every success of
// every other endpoint queues behind that batch (one recorder per
// process). A healthy endpoint Y's delivery, answered 2xx at once, stays
// 'delivering' in its history until X's recover ends; once the recorder's
// queue is full the workers stop too. ("One slow or dead endpoint never
// delays deliveries to healthy endpoints.")
func TestReviewRecoverOfOneEndpointStallsOthersOutcomes(t *testing.T) {
	t.Parallel()
	var yAt atomic.Int64
	rx := obNewReceiver(t, nil)
	ry := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		yAt.CompareAndSwap(0, time.Now().UnixNano())
		return 200
	})
	d, b := obSetup(t, nil)
	x := b.endpoint(t, "whk_x", rx.URL, nil, nil, true)
	y := b.endpoint(t, "whk_y", ry.URL, nil, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	ctx := context.Background()
	// X's backlog from an outage: 300,000 failed deliveries.
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.events (id, type, envelope, occurred_at, data) VALUES ('old','a.b','sns',now(),'{}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, next_attempt_at)
		SELECT 'old-'||g, 'old', $1, 'a.b', 'failed', 6, now() + interval '1 day' FROM generate_series(1, 300000) g`, x); err != nil {
		t.Fatal(err)
	}
	obRun(t, d)
	waitLoopOpen(t, d)

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
	obAppend(t, d, 10, obEvent("a.b", ""))
	obWaitFor(t, "Y's request", func() bool { return yAt.Load() != 0 })
	deadline := time.Unix(0, yAt.Load()).Add(time.Second)
	for time.Now().Before(deadline) {
		if b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'delivered'`, y) == 1 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case at := <-recovered:
		t.Fatalf("Y answered 2xx but its delivery was not recorded within 1s; the recover of X had ended %s before", time.Since(at))
	default:
	}
	var st string
	_ = b.pool.QueryRow(ctx, `SELECT status FROM walhook.deliveries WHERE endpoint_id = $1`, y).Scan(&st)
	at := <-recovered
	obWaitFor(t, "Y recorded", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'delivered'`, y) == 1
	})
	t.Fatalf("endpoint Y answered 2xx, yet its delivery stayed %q while X's recover ran; recorded only %s after Y answered (the recover of X returned %s after Y answered)",
		st, time.Since(time.Unix(0, yAt.Load())).Round(time.Millisecond), at.Sub(time.Unix(0, yAt.Load())).Round(time.Millisecond))
}
