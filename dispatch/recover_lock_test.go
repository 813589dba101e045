package dispatch

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// recoverBacklog gives endpoint x a backlog of failed deliveries and
// starts its recover, kept running by a row lock on one of them that the
// test holds (as a large backlog would, for seconds) until it calls
// release; the channel says when the recover returned.
func recoverBacklog(t *testing.T, b *obBundle, a *Admin, x, eventType string) (recovered <-chan time.Time, release func()) {
	t.Helper()
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.events (id, type, envelope, occurred_at, data) VALUES ('old', $1, 'sns', now(), '{}')`, eventType); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, next_attempt_at)
		SELECT 'old-'||g, 'old', $1, $2, 'failed', 6, now() + interval '1 day' FROM generate_series(1, 1000) g`, x, eventType); err != nil {
		t.Fatal(err)
	}
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blocker.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id = 'old-1000' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			_ = blocker.Rollback(ctx)
		}
	}
	t.Cleanup(release)
	done := make(chan time.Time, 1)
	go func() {
		if _, err := a.Recover(ctx, x, time.Now().Add(-time.Hour)); err != nil {
			t.Error(err)
		}
		done <- time.Now()
	}()
	waitForLockWait(t, b.pool, "(status = 'failed' OR status = 'skipped')", nil)
	return done, release
}

// A recover of endpoint X's large backlog while endpoint Y delivers: Y's
// 2xx is recorded while X's recover still runs. The recover held X's row
// FOR SHARE, the recorder's batch with X's health update waited for it,
// and every endpoint's successes queued behind that batch (one recorder
// per process), so Y's delivery stayed 'delivering' until X's recover
// ended. ("One slow or dead endpoint never delays deliveries to healthy
// endpoints.")
func TestRecoverDoesNotHoldOtherEndpointsOutcomes(t *testing.T) {
	t.Parallel()
	var yAnswered atomic.Bool
	rx := obNewReceiver(t, nil)
	ry := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int { yAnswered.Store(true); return 200 })
	d, b := obSetup(t, nil)
	x := b.endpoint(t, "whk_x", rx.URL, nil, nil, true)
	y := b.endpoint(t, "whk_y", ry.URL, nil, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	obRun(t, d)
	waitLoopOpen(t, d)
	recovered, release := recoverBacklog(t, b, a, x, "a.b")

	obAppend(t, d, 10, obEvent("a.b", "")) // one delivery each for X and Y
	obWaitFor(t, "Y's request", yAnswered.Load)
	obWaitFor(t, "Y's delivery recorded", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'delivered'`, y) == 1
	})
	select {
	case <-recovered:
		t.Fatal("Y's 2xx was recorded only after X's recover ended")
	default:
	}
	release()
	<-recovered
}

// An admin rotates (or PUTs, or deletes) endpoint X while a large recover
// of X runs: the rotation waits for the recover, but appends for other
// endpoints do not. The rotation took the endpoints lock first and then
// waited for X's row, so every append waited for it, and no event for
// any endpoint was stored (nor the slot confirmed) until the recover
// ended.
func TestRecoverDoesNotHoldAppends(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	x := b.endpoint(t, "whk_x", "http://127.0.0.1:1/", []string{"x.only"}, nil, true)
	b.endpoint(t, "whk_y", "http://127.0.0.1:1/", []string{"a.b"}, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	recovered, release := recoverBacklog(t, b, a, x, "x.only")

	rotated := make(chan struct{})
	go func() {
		defer close(rotated)
		if _, _, err := a.RotateSecret(context.Background(), x, time.Hour); err != nil {
			t.Error(err)
		}
	}()
	waitForLockWait(t, b.pool, "pg_advisory_xact_lock", nil) // the rotation waits for the recover
	obAppend(t, d, 10, obEvent("a.b", ""))                   // for Y only
	select {
	case <-recovered:
		t.Fatal("an append for endpoint Y returned only after X's recover ended")
	default:
	}
	release()
	<-recovered
	<-rotated
}
