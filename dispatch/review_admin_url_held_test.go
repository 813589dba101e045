package dispatch

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// Review: PUT url while a delivery waits in this process's queue for a
// worker. The old receiver is being retired and answers 410 Gone. After
// UpdateEndpoint has returned, no request should start to the old URL (as
// for a disable or delete: "no walhook process starts another request to
// it"), and the endpoint, now pointing at a working receiver, must not be
// disabled by the old receiver's 410.
func TestReviewURLChangeWhileHeldGoesToTheNewURL(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	old := obNewReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			<-release
			return 200
		}
		return http.StatusGone
	})
	newRC := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) {
		o.Workers, o.MaxInFlightPerEndpoint = 4, 1
	})
	ep := b.endpoint(t, "whk_1", old.URL, nil, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""), obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return old.n() == 1 })
	obWaitFor(t, "the second delivery held", func() bool { return d.hold.held() == 2 })

	u := newRC.URL
	if _, err := a.UpdateEndpoint(context.Background(), ep, EndpointPatch{URL: &u}); err != nil {
		t.Fatal(err)
	}
	close(release)
	obWaitFor(t, "both deliveries finished", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status <> 'delivering'`) == 2
	})
	time.Sleep(300 * time.Millisecond)
	var active bool
	var reason *string
	if err := b.pool.QueryRow(context.Background(), `SELECT active, disabled_reason FROM walhook.endpoints WHERE id = $1`, ep).Scan(&active, &reason); err != nil {
		t.Fatal(err)
	}
	st := map[string]int{}
	rows, _ := b.pool.Query(context.Background(), `SELECT status, count(*) FROM walhook.deliveries GROUP BY 1`)
	for rows.Next() {
		var s string
		var n int
		_ = rows.Scan(&s, &n)
		st[s] = n
	}
	rows.Close()
	if old.n() != 1 || newRC.n() != 1 || !active {
		r := ""
		if reason != nil {
			r = *reason
		}
		t.Fatalf("after the PUT of a new url: old url got %d requests (want 1: the one in flight), new url %d (want 1); endpoint active=%v reason %q; deliveries %v",
			old.n(), newRC.n(), active, r, st)
	}
}
