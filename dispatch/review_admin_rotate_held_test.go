package dispatch

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Review: a secret rotated while a delivery waits in this process's queue
// for a worker (its endpoint at its in-flight cap). After RotateSecret has
// returned, every request is to carry a signature by the new secret
// (docs/api.md "Rotate the secret": "every request in that time carries two
// signatures, so receivers holding either secret accept it").
func TestReviewRotateWhileHeldSignsWithNewSecret(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rc := obNewReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			<-release
		}
		return 200
	})
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
