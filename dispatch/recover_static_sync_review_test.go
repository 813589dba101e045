package dispatch

import (
	"context"
	"testing"
	"time"
)

// A process starts (SyncStaticEndpoints) with a config that no longer
// has static endpoint X, or disables it, while a large recover of X runs
// (from the API of another process). The sync takes the endpoints lock
// and then waits for X's row FOR UPDATE, which the recover's KEY SHARE
// lock holds: every append, for any endpoint, waits for the whole
// recover. (Recover "holds the endpoint's skip lock ... so appends never
// wait for it"; the sync takes the skip lock only of the endpoints it
// enables.)
func TestReviewRecoverStaticSyncHoldsAppends(t *testing.T) {
	t.Parallel()
	for _, disable := range []bool{false, true} {
		t.Run(map[bool]string{false: "removed", true: "disabled"}[disable], func(t *testing.T) {
			t.Parallel()
			d, b := obSetup(t, nil)
			ctx := context.Background()
			x := StaticEndpoint{Name: "x", URL: "http://127.0.0.1:1/", Secret: NewSecret(), Events: []string{"x.only"}}
			y := StaticEndpoint{Name: "y", URL: "http://127.0.0.1:1/", Secret: NewSecret(), Events: []string{"a.b"}}
			if err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{x, y}); err != nil {
				t.Fatal(err)
			}
			a := NewAdmin(b.pool, "walhook", d)
			recovered, release := recoverBacklog(t, b, a, StaticPrefix+"x", "x.only")

			synced := make(chan error, 1)
			go func() {
				eps := []StaticEndpoint{y}
				if disable {
					x.Disabled = true
					eps = []StaticEndpoint{x, y}
				}
				synced <- b.dispatcher(t, nil).SyncStaticEndpoints(ctx, eps)
			}()
			waitForLockWait(t, b.pool, "FOR UPDATE", nil) // the sync waits for X's row
			appended := make(chan struct{})
			go func() {
				defer close(appended)
				obAppend(t, d, 10, obEvent("a.b", "")) // for Y only
			}()
			select {
			case <-appended:
			case <-time.After(5 * time.Second):
				t.Errorf("an append for endpoint Y waits for X's recover (5 s and counting)")
			}
			release()
			<-recovered
			if err := <-synced; err != nil {
				t.Fatal(err)
			}
			<-appended
		})
	}
}
