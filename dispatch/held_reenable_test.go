package dispatch

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

// heldBehindCap starts a running dispatcher with one endpoint at an
// in-flight cap of 1: the first of two deliveries is in flight (its
// request waits until free is called), the second held in this process's
// queue. It returns the held delivery's id.
func heldBehindCap(t *testing.T) (d *Dispatcher, b *obBundle, a *Admin, rc *obReceiver, ep, held string, free func()) {
	t.Helper()
	release := make(chan struct{})
	var once sync.Once
	free = func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // a failure does not leave the attempt hanging
	rc = obNewReceiver(t, firstWaitsFor(release, 200))
	d, b = obSetup(t, func(o *Options) {
		o.Workers, o.MaxInFlightPerEndpoint = 4, 1
		o.Client.Timeout, o.Lease = time.Minute, 2*time.Minute
	})
	ep = b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	a = NewAdmin(b.pool, "walhook", d)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""), obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return rc.n() == 1 })
	obWaitFor(t, "the second delivery held", func() bool { return d.hold.held() == 2 })
	sent := rc.requests()[0].Header.Get("webhook-id")
	if err := b.pool.QueryRow(context.Background(), `SELECT id FROM walhook.deliveries WHERE status = 'delivering' AND id <> $1`, sent).Scan(&held); err != nil {
		t.Fatal(err)
	}
	return d, b, a, rc, ep, held, free
}

// An admin disables an endpoint while a delivery to it waits in this
// process's queue, then re-enables it and recovers its deliveries
// (docs/api.md "Recover an endpoint's deliveries"). The held delivery is
// dropped as skipped by the claim loop; its release statement read the
// endpoint still disabled, but committed only after the recover had run
// (here it waits for a row lock the test holds, as any slow statement
// may). The recover found it still 'delivering', and it was left
// 'skipped' for good although the endpoint is active and the operator
// recovered it: a re-enable must wait for such a release under way, as it
// waits for the disable's skip of the pending deliveries.
func TestHeldDeliverySkippedAcrossReenableAndRecover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, b, a, rc, ep, held, free := heldBehindCap(t)

	// The held delivery's release (below) takes its snapshot and then
	// waits for this lock.
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id = $1 FOR UPDATE`, held); err != nil {
		t.Fatal(err)
	}
	off, on := false, true
	if _, err := a.UpdateEndpoint(ctx, ep, EndpointPatch{Active: &off}); err != nil {
		t.Fatal(err)
	}
	waitForLockWait(t, b.pool, "locked_until) IN", nil) // the claim loop releases the held delivery as skipped

	done := make(chan error, 1)
	go func() {
		if _, err := a.UpdateEndpoint(ctx, ep, EndpointPatch{Active: &on}); err != nil {
			done <- err
			return
		}
		_, err := a.Recover(ctx, ep, time.Now().Add(-time.Hour))
		done <- err
	}()
	// Either the re-enable and the recover are done, or the re-enable
	// waits for the release under way.
	var finished bool
	var rerr error
	obWaitFor(t, "the re-enable and recover done, or the re-enable waiting for the release", func() bool {
		select {
		case rerr = <-done:
			finished = true
			return true
		default:
		}
		return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%static, active%FOR UPDATE%'`) > 0
	})
	t.Logf("re-enable and recover returned while the release was under way: %v", finished)
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if !finished {
		rerr = <-done
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	free() // the endpoint's one in-flight place is free for the held delivery
	// After the recover has returned, the held delivery is pending, being
	// sent, or sent; never skipped.
	obWaitFor(t, "the held delivery delivered", func() bool {
		s, _, _, _ := b.deliveryState(t, held)
		if s == "skipped" {
			t.Fatalf("the held delivery is %s after the re-enable and the recover returned (endpoint active, %d requests made)", s, rc.n())
		}
		return s == "delivered"
	})
}

// The same for a delivery in flight when its endpoint is disabled: its
// attempt fails, and the outcome makes the retry 'skipped' (the endpoint
// read disabled), kept for recover. The outcome's update read the endpoint
// in a snapshot taken before the re-enable committed and committed after
// the recover had run (here it waits for a row lock the test holds), so
// the recover found the delivery still 'delivering' and it was left
// skipped for good.
func TestRetrySkippedAcrossReenableAndRecover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	rc := obNewReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			<-release
			return http.StatusInternalServerError // retried
		}
		return 200
	})
	d, b := obSetup(t, func(o *Options) {
		o.Client.Timeout, o.Lease = time.Minute, 2*time.Minute
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return rc.n() == 1 })
	id := rc.requests()[0].Header.Get("webhook-id")

	off, on := false, true
	if _, err := a.UpdateEndpoint(ctx, ep, EndpointPatch{Active: &off}); err != nil {
		t.Fatal(err)
	}
	// The outcome's update takes its snapshot and then waits for this lock.
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id = $1 FOR UPDATE`, id); err != nil {
		t.Fatal(err)
	}
	free() // the attempt fails
	waitForLockWait(t, b.pool, "last_status_code = $5", nil)

	done := make(chan error, 1)
	go func() {
		if _, err := a.UpdateEndpoint(ctx, ep, EndpointPatch{Active: &on}); err != nil {
			done <- err
			return
		}
		_, err := a.Recover(ctx, ep, time.Now().Add(-time.Hour))
		done <- err
	}()
	var finished bool
	var rerr error
	obWaitFor(t, "the re-enable and recover done, or the re-enable waiting for the outcome", func() bool {
		select {
		case rerr = <-done:
			finished = true
			return true
		default:
		}
		return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%static, active%FOR UPDATE%'`) > 0
	})
	t.Logf("re-enable and recover returned while the outcome was under way: %v", finished)
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if !finished {
		rerr = <-done
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	obWaitFor(t, "the delivery retried and delivered", func() bool {
		s, _, _, _ := b.deliveryState(t, id)
		if s == "skipped" {
			t.Fatalf("the delivery is %s after the re-enable and the recover returned (endpoint active, %d requests made)", s, rc.n())
		}
		return s == "delivered"
	})
}

// Disable and re-enable (no recover) while a delivery to X waits in this
// process's queue, the claim loop busy meanwhile (here handing back a
// delivery to endpoint Y, whose secret was rotated, behind a row lock the
// test holds): when the loop drops the held delivery as skipped, X is
// active again, so it goes back pending (releaseSQL) and is delivered.
// Dropped skipped behind the re-enable's back, nothing would send it
// (a re-enable re-queues nothing).
func TestHeldDeliveryAfterQuickReenable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	relX, relY := make(chan struct{}), make(chan struct{})
	var onceX, onceY sync.Once
	freeX := func() { onceX.Do(func() { close(relX) }) }
	freeY := func() { onceY.Do(func() { close(relY) }) }
	defer freeX()
	defer freeY()
	rx := obNewReceiver(t, firstWaitsFor(relX, 200))
	ry := obNewReceiver(t, firstWaitsFor(relY, 200))
	d, b := obSetup(t, func(o *Options) {
		o.Workers, o.MaxInFlightPerEndpoint = 4, 1
		o.Client.Timeout, o.Lease = time.Minute, 2*time.Minute
	})
	x := b.endpoint(t, "whk_x", rx.URL, nil, nil, true)
	y := b.endpoint(t, "whk_y", ry.URL, nil, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""), obEvent("a.b", "")) // two for each endpoint
	obWaitFor(t, "the first requests", func() bool { return rx.n() == 1 && ry.n() == 1 })
	obWaitFor(t, "one delivery held for each", func() bool { return d.hold.held() == 4 })
	heldOf := func(ep string, rc *obReceiver) string {
		var id string
		if err := b.pool.QueryRow(ctx, `SELECT id FROM walhook.deliveries WHERE endpoint_id = $1 AND status = 'delivering' AND id <> $2`,
			ep, rc.requests()[0].Header.Get("webhook-id")).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	heldX, heldY := heldOf(x, rx), heldOf(y, ry)

	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id = $1 FOR UPDATE`, heldY); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.RotateSecret(ctx, y, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitForLockWait(t, b.pool, "locked_until) IN", nil) // the loop hands Y's held delivery back, and waits
	off, on := false, true
	if _, err := a.UpdateEndpoint(ctx, x, EndpointPatch{Active: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.UpdateEndpoint(ctx, x, EndpointPatch{Active: &on}); err != nil {
		t.Fatal(err)
	}
	if s, _, _, _ := b.deliveryState(t, heldX); s != "delivering" {
		t.Fatalf("X's held delivery is %s before the loop looked at it again", s)
	}
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	freeX()
	freeY()
	obWaitFor(t, "X's held delivery delivered", func() bool {
		s, _, _, _ := b.deliveryState(t, heldX)
		if s == "skipped" {
			t.Fatalf("X's held delivery is %s after a disable and re-enable (X active, %d requests to X)", s, rx.n())
		}
		return s == "delivered"
	})
	b.waitStatus(t, heldY, "delivered")
}
