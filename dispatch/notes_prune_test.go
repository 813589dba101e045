package dispatch

import (
	"context"
	"sync"
	"testing"
	"time"
)

func syncMapLen(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// An endpoint whose secret is rotated and which is then deleted is noted
// twice: changed, then disabled. Over many such endpoints (a provisioning
// tool cycling short-lived subscriptions), the notes older than two leases
// must be dropped from both maps, whichever map the pruning note went to.
// They were pruned only in the map of every 64th note, and with the notes
// alternating that was always the disabled map: the changed map kept every
// endpoint id for good.
func TestNotesOfDeletedEndpointsArePruned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) { o.Lease = time.Millisecond })
	a := NewAdmin(b.pool, "walhook", d)
	const n = 300
	for i := 0; i < n; i++ {
		ep, err := a.CreateEndpoint(ctx, EndpointInput{URL: rc.URL, Events: []string{"a.b"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.RotateSecret(ctx, ep.ID, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := a.DeleteEndpoint(ctx, ep.ID); err != nil {
			t.Fatal(err)
		}
	}
	// Every note is older than two leases by now; a pass keeps at most
	// the notes since the last one.
	if c, o := syncMapLen(&d.changed), syncMapLen(&d.disabled); c > 64 || o > 64 {
		t.Fatalf("after %d endpoints rotated and deleted: %d changed and %d disabled notes kept, want at most 64 each", n, c, o)
	}
}
