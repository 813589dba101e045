package dispatch

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// A 410 disables its endpoint in the attempt's own transaction. When the
// disable was a transaction of its own after the outcome, the delivery
// was pending again in between, due after the schedule's next delay, and
// a claim could send it to the gone receiver once more (here, while the
// disable waits for a lock, the 5 ms retry went out at once; CI saw it
// with no lock held, 5 ms after the 410).
func TestGoneDisablesBeforeTheRetryIsDue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusGone })
	d, b := obSetup(t, nil)
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d)
	waitLoopOpen(t, d)

	// A session holds the endpoints lock as a PUT or an append might.
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, `SELECT FROM walhook.endpoints_version FOR SHARE`); err != nil {
		t.Fatal(err)
	}
	obAppend(t, d, 10, obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return rc.n() >= 1 })
	waitForLockWait(t, b.pool, "endpoints_version", nil)
	// The retry is due 5 ms after the 410 and claims run every 50 ms at
	// the latest: a delivery left due would go out well within this.
	time.Sleep(500 * time.Millisecond)
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	obWaitFor(t, "the delivery settled", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status IN ('pending', 'delivering')`) == 0
	})
	if n := rc.n(); n != 1 {
		t.Fatalf("the gone receiver got %d requests, want 1: the delivery was retried before its endpoint was disabled", n)
	}
	if b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'skipped'`) != 1 {
		t.Fatal("the delivery is not skipped with its endpoint (recover brings it back)")
	}
	if b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = $1 AND NOT active AND disabled_reason LIKE '%410%'`, ep) != 1 {
		t.Fatal("the endpoint is not disabled with the 410 as reason")
	}
}
