package dispatch

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/mapper"
)

// Graceful stop: Run stops claiming but lets the attempt in flight finish
// and records it before returning nil.
func TestRunGracefulStopFinishesInFlight(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	proceed := make(chan struct{})
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		arrived <- struct{}{}
		<-proceed
		return 200
	})
	reg := prometheus.NewRegistry()
	d, b := obSetup(t, func(o *Options) { o.Registerer = reg })
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	<-arrived
	cancel()
	close(proceed)
	if err := <-errc; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	id := mapper.DeliveryID(ev.Envelope, ev.ID, ep)
	if s, _, code, _ := b.deliveryState(t, id); s != "delivered" || code != 200 {
		t.Fatalf("in-flight delivery is %s (%d) after stop, want delivered", s, code)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[mf.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for _, name := range []string{"walhook_delivery_attempts_total", "walhook_attempt_duration_seconds",
		"walhook_commit_to_delivery_seconds", "walhook_append_events", "walhook_append_duration_seconds"} {
		if got[name] != 1 {
			t.Errorf("metric %s = %v, want 1", name, got[name])
		}
	}
}

func TestNewRejectsNilPoolAndDoubleRegistration(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Fatal("New(nil pool) succeeded")
	}
	_, b := obSetup(t, nil)
	reg := prometheus.NewRegistry()
	if _, err := New(b.pool, Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(b.pool, Options{Registerer: reg}); err == nil {
		t.Fatal("two Dispatchers registered the same metrics on one registry without an error")
	}
}

// A backlog for one endpoint, larger than its in-flight cap, drains by
// claiming as workers finish, not by waiting for polls (the poll interval
// here is an hour), and never exceeds the cap. Every delivery is recorded
// as delivered, with one attempt row each.
func TestRunDrainsBacklogAboveCapWithoutPolling(t *testing.T) {
	t.Parallel()
	const total, cap = 300, 3
	var mu sync.Mutex
	cur, peak := 0, 0
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		mu.Lock()
		cur++
		peak = max(peak, cur)
		mu.Unlock()
		time.Sleep(time.Millisecond)
		mu.Lock()
		cur--
		mu.Unlock()
		return 200
	})
	d, b := obSetup(t, func(o *Options) {
		o.PollInterval = time.Hour
		o.MaxInFlightPerEndpoint = cap
		o.Workers = 16
	})
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	evs := make([]mapper.Event, total)
	for i := range evs {
		evs[i] = obEvent("a.b", "")
	}
	obAppend(t, d, 10, evs...)
	stop := obRun(t, d)
	obWaitFor(t, "every delivery sent", func() bool { return len(rc.requests()) >= total })
	stop()
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`); n != total {
		t.Errorf("%d deliveries recorded as delivered, want %d", n, total)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts`); n != total {
		t.Errorf("%d attempt rows, want %d", n, total)
	}
	if got := len(rc.requests()); got != total {
		t.Errorf("receiver got %d requests, want %d (no duplicates without a crash)", got, total)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak > cap {
		t.Errorf("endpoint saw %d concurrent requests, cap is %d", peak, cap)
	}
}

// An endpoint's walhook_delivery_attempts_total series go with it: at
// once in the process that deletes it, and at the next maintenance pass
// that looks (forgetDeletedEndpoints) in every other. API endpoints come
// and go; their series piled up on /metrics until a restart.
func TestMetricsForgetDeletedEndpoints(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	reg := prometheus.NewRegistry()
	d, b := obSetup(t, func(o *Options) { o.Registerer = reg })
	a := NewAdmin(b.pool, "walhook", d)
	ids := []string{b.endpoint(t, "whk_1", rc.URL, nil, nil, true), b.endpoint(t, "whk_2", rc.URL, nil, nil, true),
		b.endpoint(t, "whk_3", rc.URL, nil, nil, true)}
	obRun(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""))
	series := func() map[string]bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, mf := range mfs {
			if mf.GetName() != "walhook_delivery_attempts_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "endpoint" {
						out[l.GetValue()] = true
					}
				}
			}
		}
		return out
	}
	obWaitFor(t, "three endpoints' series", func() bool { return len(series()) == 3 })

	if err := a.DeleteEndpoint(context.Background(), ids[0]); err != nil {
		t.Fatal(err)
	}
	if s := series(); s[ids[0]] || !s[ids[1]] || !s[ids[2]] {
		t.Fatalf("after deleting %s here: series of %v", ids[0], s)
	}
	// Deleted by another process: the row is gone, this one's series stay
	// until a pass looks.
	if _, err := b.pool.Exec(context.Background(), `DELETE FROM walhook.endpoints WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := d.forgetDeletedEndpoints(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := series(); s[ids[1]] || !s[ids[2]] {
		t.Fatalf("after %s was deleted elsewhere and a pass: series of %v", ids[1], s)
	}
}
