package dispatch

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

// PUT url while another process holds a delivery to the endpoint and is
// making its LISTEN connection again (a store blip): LISTEN is up, its
// catch-up query not finished. The delivery claimed before LISTEN came
// back is handed back and claimed again, still with the old URL, and then
// the PUT commits. Its notification must be read as it arrives, not after
// the catch-up, so the held delivery is not sent to the old URL, whose 410
// would disable the endpoint that now points at a working receiver.
// (Notifications waited for the catch-up, which ran on the LISTEN
// connection; CI caught the re-claim in between.)
func TestHeldDeliveryDuringRelisten(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free() // a failure does not leave the attempt hanging
	old := obNewReceiver(t, firstWaitsFor(release, http.StatusGone))
	newRC := obNewReceiver(t, nil)
	d1, b := obSetup(t, nil) // the process serving the API; not delivering
	ep := b.endpoint(t, "whk_1", old.URL, nil, nil, true)
	d2 := b.dispatcher(t, func(o *Options) {
		o.Workers, o.MaxInFlightPerEndpoint = 4, 1
		o.Client.Timeout, o.Lease = time.Minute, 2*time.Minute
	})
	obRun(t, d2)
	waitLoopOpen(t, d2)
	obAppend(t, d2, 10, obEvent("a.b", ""), obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return old.n() == 1 })
	obWaitFor(t, "the second delivery held", func() bool { return d2.hold.held() == 2 })

	// d2 makes its LISTEN connection in a goroutine of its own, which
	// nothing above waits for (on a loaded machine it came up after the
	// deliveries were held): wait for it before breaking it.
	obWaitFor(t, "d2's LISTEN connection", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'idle' AND query LIKE 'LISTEN %'`) == 1
	})

	// d2's LISTEN connection breaks and is made again; its catch-up read
	// waits (here for a lock the test holds).
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, `LOCK TABLE walhook.endpoints_deleted IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var heldLease time.Time
	if err := b.pool.QueryRow(ctx, `SELECT max(locked_until) FROM walhook.deliveries WHERE status = 'delivering'`).Scan(&heldLease); err != nil {
		t.Fatal(err)
	}
	if tag, err := b.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND state = 'idle' AND query LIKE 'LISTEN %'`); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("terminating the LISTEN connection: %v, %d found", err, tag.RowsAffected())
	}
	lockStart := time.Now()
	waitForLockWait(t, b.pool, "endpoints_deleted", nil)
	t.Logf("LISTEN made again, catch-up waiting after %s", time.Since(lockStart))
	// The held delivery, claimed before LISTEN came back, is handed back
	// and claimed again (with the URL as it still is).
	obWaitFor(t, "the held delivery claimed again", func() bool {
		var n int
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivering' AND locked_until > $1`, heldLease).Scan(&n)
		return n == 1
	})

	u := newRC.URL
	putStart := time.Now()
	if _, err := NewAdmin(b.pool, "walhook", d1).UpdateEndpoint(ctx, ep, EndpointPatch{URL: &u}); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	t.Logf("PUT took %s; old requests so far %d", returned.Sub(putStart), old.n())
	// Another process follows a change once its notification arrives
	// (milliseconds); here the catch-up still waits.
	obWaitFor(t, "the change's notification read while the catch-up waits", func() bool {
		v, ok := d2.changed.Load(ep)
		return ok && v.(time.Time).After(putStart)
	})
	free() // d2's worker is free for the held delivery
	obWaitFor(t, "the held delivery sent", func() bool { return old.n()+newRC.n() == 2 })
	_ = blocker.Rollback(ctx)
	if old.n() != 1 {
		last := time.Time{}
		for _, r := range old.requests() {
			if r.At.After(last) {
				last = r.At
			}
		}
		var active bool
		_ = b.pool.QueryRow(ctx, `SELECT active FROM walhook.endpoints WHERE id = $1`, ep).Scan(&active)
		t.Fatalf("a request to the old URL started %s after the PUT returned; endpoint active=%v", last.Sub(returned), active)
	}
}
