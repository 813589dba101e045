package dispatch

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A secret rotated while a delivery waits in this process's queue for a
// worker (its endpoint at its in-flight cap): after RotateSecret has
// returned, every request carries a signature by the new secret
// (docs/api.md "Rotate the secret": "every request in that time carries two
// signatures, so receivers holding either secret accept it"). The held
// delivery kept the secrets of its claim and was signed by the old one
// only; it is now handed back and claimed again.
func TestHeldDeliveryAfterRotate(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rc := obNewReceiver(t, firstWaitsFor(release, 200))
	d, b := obSetup(t, func(o *Options) {
		o.Workers, o.MaxInFlightPerEndpoint = 4, 1
	})
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	a := NewAdmin(b.pool, "walhook", d)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""), obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return rc.n() == 1 })
	obWaitFor(t, "the second delivery held", func() bool { return d.hold.held() == 2 })

	secret, _, err := a.RotateSecret(context.Background(), ep, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	close(release)
	obWaitFor(t, "the second request", func() bool { return rc.n() == 2 })
	r := rc.requests()[1]
	if !r.At.After(rotated) {
		t.Fatalf("second request arrived before the rotation returned")
	}
	key, _ := DecodeSecret(secret)
	ts := r.Header.Get("webhook-timestamp")
	var tsn int64
	for _, c := range ts {
		tsn = tsn*10 + int64(c-'0')
	}
	want := Sign([][]byte{key}, r.Header.Get("webhook-id"), tsn, r.Body)
	got := r.Header.Get("webhook-signature")
	if !strings.Contains(got, want) {
		t.Fatalf("request sent %s after the rotation returned carries %d signature(s), none by the new secret: a receiver holding only the new secret rejects it (signature header %q)",
			r.At.Sub(rotated), len(strings.Fields(got)), got)
	}
}

// PUT url while a delivery waits in this process's queue for a worker,
// the old receiver being retired (it answers 410 Gone): after
// UpdateEndpoint has returned no request starts to the old URL (as for a
// disable or delete: "no walhook process starts another request to it"),
// so the old receiver's 410 cannot disable the endpoint that now points
// at a working one. The held delivery went to the old URL with the URL of
// its claim; it is now handed back and claimed again.
func TestHeldDeliveryAfterURLChange(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	old := obNewReceiver(t, firstWaitsFor(release, http.StatusGone))
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
	// Finished for good: the held delivery goes pending when handed back,
	// and only its next claim sends it (to the new URL, or wrongly to the
	// old one, whose 410 leaves it skipped).
	obWaitFor(t, "both deliveries finished", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status IN ('delivered', 'failed', 'skipped')`) == 2
	})
	time.Sleep(300 * time.Millisecond) // a request that should not be made would show up here
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
