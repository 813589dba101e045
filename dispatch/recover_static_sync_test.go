package dispatch

import (
	"context"
	"testing"
	"time"
)

// A process starts (SyncStaticEndpoints) with a config that no longer
// has static endpoint X, or disables it, while a recover of X runs (from
// another process's API). The sync waits for the recover, but appends for
// other endpoints do not: the sync took the endpoints lock and then waited
// for X's row, so every append waited for the whole recover. It now takes
// the skip lock of every endpoint it may change first, as the API does.
func TestRecoverDoesNotHoldAppendsBehindAStaticSync(t *testing.T) {
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
			waitForLockWait(t, b.pool, "pg_advisory_xact_lock", nil) // the sync waits for X's recover
			appended := make(chan struct{})
			go func() {
				defer close(appended)
				obAppend(t, d, 10, obEvent("a.b", "")) // for Y only
			}()
			select { // the recover cannot end before release()
			case <-appended:
			case <-time.After(30 * time.Second):
				t.Errorf("an append for endpoint Y waits for X's recover")
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

// Another process's sync adds static endpoint Z after this sync read the
// static endpoints and before it took their skip locks: this sync starts
// again, so it holds Z's skip lock too when it removes Z (without it, a
// recover of Z would hold the sync while it held the endpoints lock, and
// every append with it).
func TestStaticSyncStartsAgainWhenStaticEndpointsChange(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	y := StaticEndpoint{Name: "y", URL: "http://127.0.0.1:1/", Secret: NewSecret()}
	z := StaticEndpoint{Name: "z", URL: "http://127.0.0.1:1/", Secret: NewSecret()}
	other := b.dispatcher(t, nil)
	reads := 0
	d.afterStaticRead = func() {
		reads++
		if reads == 1 { // the other process's sync commits Z now
			if err := other.SyncStaticEndpoints(ctx, []StaticEndpoint{y, z}); err != nil {
				t.Error(err)
			}
		}
	}
	if err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{y}); err != nil {
		t.Fatal(err)
	}
	if reads != 2 {
		t.Errorf("the static endpoints were read %d times, want 2 (once more after Z appeared)", reads)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE static`); n != 1 {
		t.Errorf("%d static endpoints after the sync of y alone, want 1", n)
	}
}
