package dispatch

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walhook/walhook/internal/syncbuf"
	"github.com/walhook/walhook/mapper"
)

// waitLoopOpen waits until d's claim loop takes handoffs.
func waitLoopOpen(t *testing.T, d *Dispatcher) {
	t.Helper()
	obWaitFor(t, "claim loop running", func() bool {
		d.hold.mu.Lock()
		defer d.hold.mu.Unlock()
		return d.hold.open
	})
}

func startedVia(d *Dispatcher, via string) int {
	return int(testutil.ToFloat64(d.metrics.started.WithLabelValues(via)))
}

// Append stores what the running claim loop has room for as claimed by
// this process and hands it straight to the workers: no claim, first
// attempt counted. A replay of the same transaction sends nothing again.
func TestAppendHandsDeliveriesToWorkers(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	// No poll and nothing pending: only a handoff can start these.
	d, b := obSetup(t, func(o *Options) { o.PollInterval = time.Hour })
	ep := b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d)
	waitLoopOpen(t, d)
	evs := []mapper.Event{obEvent("a.b", ""), obEvent("a.b", ""), obEvent("a.b", "")}
	obAppend(t, d, 10, evs...)
	obWaitFor(t, "3 deliveries", func() bool { return rc.n() == 3 })
	obWaitFor(t, "3 recorded", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered' AND attempts = 1
			AND locked_by IS NULL`) == 3
	})
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts WHERE attempt = 1 AND status_code = 200`); n != 3 {
		t.Fatalf("%d attempt rows, want 3", n)
	}
	if a, c := startedVia(d, "append"), startedVia(d, "claim"); a != 3 || c != 0 {
		t.Fatalf("started via append %d, via claim %d; want 3 and 0", a, c)
	}
	// The headers and body are the ones a claim would have sent.
	for _, r := range rc.requests() {
		id := r.Header.Get("X-Webhook-ID")
		var want []byte
		for i := range evs {
			if mapper.DeliveryID(evs[i].Envelope, evs[i].ID, ep) == id {
				want = evs[i].Body(id)
			}
		}
		if !bytes.Equal(r.Body, want) {
			t.Fatalf("body of %s:\n%s\nwant\n%s", id, r.Body, want)
		}
	}

	// A replay (cdc sends the transaction again after a crash) inserts
	// nothing, so nothing is handed over and the room is given back.
	obAppend(t, d, 10, evs...)
	time.Sleep(200 * time.Millisecond)
	if rc.n() != 3 {
		t.Fatalf("a replayed append sent %d requests more", rc.n()-3)
	}
	obWaitFor(t, "room given back", func() bool { return d.hold.held() == 0 })
}

// What the loop has no room for is stored pending and claimed.
func TestAppendHandsOnlyWhatFits(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) { o.Workers = 2 })
	_, extra, _ := d.prefetch()
	room := 2 + extra // the workers and what is handed over beyond them
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d)
	waitLoopOpen(t, d)
	if got, ok := d.HandoffRoom(t.Context(), 1, 0); got != room || !ok {
		t.Fatalf("HandoffRoom = %d, %v; want %d, true", got, ok, room)
	}
	var evs []mapper.Event
	n := room + 6
	for range n {
		evs = append(evs, obEvent("a.b", ""))
	}
	obAppend(t, d, 10, evs...)
	obWaitFor(t, "all delivered", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == n
	})
	if rc.n() != n {
		t.Fatalf("receiver got %d requests, want %d", rc.n(), n)
	}
	if a, c := startedVia(d, "append"), startedVia(d, "claim"); a != room || c != 6 {
		t.Fatalf("started via append %d, via claim %d; want %d and 6", a, c, room)
	}
}

// A handed delivery that fails is retried through the store, and the
// retry sends the same body under the same id.
func TestHandedDeliveryRetriedWithSameBody(t *testing.T) {
	t.Parallel()
	rc := obNewReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			return 500
		}
		return 200
	})
	d, b := obSetup(t, nil)
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", "auction_7"))
	obWaitFor(t, "the retry", func() bool { return rc.n() == 2 })
	reqs := rc.requests()
	if reqs[0].Header.Get("X-Webhook-ID") != reqs[1].Header.Get("X-Webhook-ID") || !bytes.Equal(reqs[0].Body, reqs[1].Body) {
		t.Fatalf("retry differs from the handed attempt:\n%s %s\n%s %s", reqs[0].Header.Get("X-Webhook-ID"), reqs[0].Body,
			reqs[1].Header.Get("X-Webhook-ID"), reqs[1].Body)
	}
	if a, c := startedVia(d, "append"), startedVia(d, "claim"); a != 1 || c != 1 {
		t.Fatalf("started via append %d, via claim %d; want 1 and 1", a, c)
	}
}

// A held delivery whose endpoint stays at its cap is handed back before
// its lease could run out while it is sent, and is delivered once.
func TestHeldDeliveryHandedBackBeforeLease(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rc := obNewReceiver(t, firstWaitsFor(release, 200))
	var logs syncbuf.Buffer
	d, b := obSetup(t, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.Registerer = prometheus.NewRegistry()
		o.Workers, o.MaxInFlightPerEndpoint, o.BatchSize = 1, 1, 1
		o.Client.Timeout = 5 * time.Second
		o.Lease = o.Client.Timeout + prefetchMargin + 300*time.Millisecond // a held delivery waits 300ms at most
	})
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obRun(t, d)
	waitLoopOpen(t, d)
	obAppend(t, d, 10, obEvent("a.b", ""), obEvent("a.b", ""))
	obWaitFor(t, "the first request", func() bool { return rc.n() == 1 })
	obWaitFor(t, "a held delivery handed back", func() bool {
		return strings.Contains(logs.String(), "handed back deliveries that waited too long for a worker")
	})
	close(release)
	obWaitFor(t, "2 delivered", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered' AND attempts = 1`) == 2
	})
	if rc.n() != 2 {
		t.Fatalf("receiver got %d requests, want 2", rc.n())
	}
}

// HandoffRoom reports the room the next Append could hand over, waits for
// enough of it to free up, and gives up after its wait.
func TestHandoffRoom(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		<-release
		return 200
	})
	d, b := obSetup(t, func(o *Options) { o.Workers = 1 })
	if got, ok := d.HandoffRoom(t.Context(), 1, time.Minute); got != 0 || ok {
		t.Fatalf("HandoffRoom before the claim loop runs = %d, %v; want 0, false at once", got, ok)
	}
	_, extra, _ := d.prefetch()
	room := 1 + extra
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	stop := obRun(t, d)
	defer stop()
	defer close(release) // before stop: the held attempt must finish
	waitLoopOpen(t, d)

	var evs []mapper.Event
	for range room {
		evs = append(evs, obEvent("a.b", ""))
	}
	obAppend(t, d, 10, evs...)
	obWaitFor(t, "the first request", func() bool { return rc.n() == 1 })
	start := time.Now()
	if got, ok := d.HandoffRoom(t.Context(), room, 50*time.Millisecond); got != 0 || ok {
		t.Fatalf("HandoffRoom with every place taken = %d, %v; want 0, false", got, ok)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("HandoffRoom gave up after %s, before its wait", waited)
	}

	// Waiting for room: it returns once an eighth of the places are free
	// (less than asked for), not at the first one.
	type result struct {
		room int
		ok   bool
	}
	got := make(chan result, 1)
	go func() {
		r, ok := d.HandoffRoom(t.Context(), room, time.Minute)
		got <- result{r, ok}
	}()
	select {
	case r := <-got:
		t.Fatalf("HandoffRoom returned %+v with no room free", r)
	case <-time.After(50 * time.Millisecond):
	}
	release <- struct{}{} // one delivery done: one place free
	select {
	case r := <-got:
		t.Fatalf("HandoffRoom returned %+v with one place free of %d", r, room)
	case <-time.After(50 * time.Millisecond):
	}
	for range room / 8 {
		release <- struct{}{}
	}
	select {
	case r := <-got:
		if !r.ok || r.room < room/8 {
			t.Fatalf("HandoffRoom = %+v; want at least %d, true", r, room/8)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("HandoffRoom still waiting with half the places free")
	}
}

// Claims and handoffs have budgets of their own: a queue full of handed
// deliveries leaves the claim budget whole (retries and other processes'
// leftovers are still claimed), and what finishes gives back to the
// budget it came from.
func TestClaimBudgetApartFromHandoffs(t *testing.T) {
	var f inflight
	f.start(2, 4, 10, 12) // claims: 2 per endpoint, 4 in all; handoffs: 10 and 12
	res := f.reserve()
	taken := 0
	for _, ep := range []string{"a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "b", "b", "b"} {
		if res.take(ep) {
			taken++
		}
	}
	if taken != 12 || f.n["a"] != 10 || f.n["b"] != 2 {
		t.Fatalf("handed %d (a %d, b %d); want 12 (a 10 at its limit, b 2 at the total)", taken, f.n["a"], f.n["b"])
	}
	res.handoff(nil) // nothing stored as claimed: all of it comes back
	if f.held() != 0 {
		t.Fatalf("held %d after a handoff of nothing, want 0", f.held())
	}

	res = f.reserve()
	for range 12 {
		res.take("a") // 10 fit
	}
	if room, _, _ := f.room(); room != 0 {
		t.Fatalf("handoff room %d with endpoint a at its limit, want 0", room)
	}
	if f.heldByClaims() != 0 {
		t.Fatalf("claims hold %d, want 0: handoffs count apart", f.heldByClaims())
	}
	if ids, free := f.free(2); len(ids) != 0 || len(free) != 0 {
		t.Fatalf("claim slots %v %v; want none taken", ids, free)
	}
	f.add("a", 1, false) // a claim for a, beside its 10 handed
	if ids, free := f.free(2); len(ids) != 1 || free[0] != 1 {
		t.Fatalf("claim slots %v %v; want a with 1 free", ids, free)
	}
	f.add("a", -1, false)
	f.add("a", -1, true)
	if f.heldByClaims() != 0 || f.held() != 9 {
		t.Fatalf("after one of each finished: claims hold %d, all %d; want 0 and 9", f.heldByClaims(), f.held())
	}
	f.mu.Lock()
	f.appends.Done() // the second reservation, never handed off
	f.mu.Unlock()
}

// HandoffRoom's wait counts from the last room freed, not from the call:
// workers that free room slowly but steadily keep the consumer waiting
// for them (pacing holds on a busy machine); only workers that free
// nothing for the wait make it give up.
func TestHandoffRoomWaitsWhileRoomFrees(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		<-release
		return 200
	})
	d, b := obSetup(t, func(o *Options) { o.Workers = 1 })
	_, extra, _ := d.prefetch()
	room := 1 + extra
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	stop := obRun(t, d)
	defer stop()
	defer close(release)
	waitLoopOpen(t, d)

	var evs []mapper.Event
	for range room {
		evs = append(evs, obEvent("a.b", ""))
	}
	obAppend(t, d, 10, evs...)
	obWaitFor(t, "the first request", func() bool { return rc.n() == 1 })

	// Generous margins for a loaded machine: each place must free within
	// wait of the last (every plus an HTTP round trip), and freeing them
	// all takes longer than one wait.
	const wait = time.Second
	const every = 400 * time.Millisecond
	need := max(room/8, 1)
	if time.Duration(need)*every <= wait {
		t.Fatalf("the test needs freeing %d places at %s each to take longer than the %s wait", need, every, wait)
	}
	type result struct {
		room int
		ok   bool
	}
	got := make(chan result, 1)
	start := time.Now()
	go func() {
		r, ok := d.HandoffRoom(t.Context(), room, wait)
		got <- result{r, ok}
	}()
	for i := 0; ; i++ {
		select {
		case r := <-got:
			if !r.ok || r.room < need {
				t.Fatalf("HandoffRoom = %+v after %d places freed one every %s; want at least %d, true",
					r, i, every, need)
			}
			if took := time.Since(start); took <= wait {
				t.Fatalf("HandoffRoom returned after %s; the room cannot have freed before %s", took, wait)
			}
			return
		case <-time.After(every):
		}
		if i > need+50 {
			t.Fatalf("HandoffRoom still waiting after %d places freed", i)
		}
		release <- struct{}{}
	}
}

// Room freed at other endpoints while the fullest one hangs at its limit
// does not count as progress: HandoffRoom gives up after its wait however
// often the healthy endpoint frees room (it would otherwise hold the
// replication consumer for as long as the healthy endpoint is busy).
func TestHandoffRoomGivesUpBehindAHangingEndpoint(t *testing.T) {
	t.Parallel()
	var d Dispatcher
	d.hold.start(2, 4, 10, 12) // handoffs: 10 per endpoint, 12 in all
	res := d.hold.reserve()    // an Append's reservation, never handed off here
	for range 10 {
		res.take("hangs")
	}
	res.take("healthy")
	res.take("healthy")
	if room, _, _ := d.hold.room(); room != 0 {
		t.Fatalf("handoff room %d with every place taken, want 0", room)
	}

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the healthy endpoint finishes one and takes another, again and again
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			d.hold.add("healthy", -1, true)
			d.hold.add("healthy", 1, true)
		}
	}()
	defer func() { close(stop); <-done }()

	const wait = 100 * time.Millisecond
	start := time.Now()
	got := make(chan bool, 1)
	go func() {
		_, ok := d.HandoffRoom(t.Context(), 4, wait)
		got <- ok
	}()
	select {
	case ok := <-got:
		if ok {
			t.Fatal("HandoffRoom found room with the hanging endpoint at its limit")
		}
		if took := time.Since(start); took < wait {
			t.Fatalf("HandoffRoom gave up after %s, before its wait", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("HandoffRoom still waiting after 10 s: room freed at the healthy endpoint kept it waiting")
	}
}
