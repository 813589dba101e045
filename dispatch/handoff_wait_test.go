package dispatch

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// HandoffRoom gives up once the room has not grown for its wait, even when
// room it saw freed as the wait ended was taken again at once (a claim of
// the freed place) and nothing is freed after: the wait starts again,
// rather than leaving no timer to end it. Room here moves between 0 and 1
// without a freed signal, as a release followed by a claim looks to a
// reader that missed the signal.
func TestHandoffRoomGivesUpWhenFreedRoomIsTakenAgain(t *testing.T) {
	d := &Dispatcher{}
	d.hold.start(64, 64, 64, 64)
	d.hold.add("a", 64, false) // room 0; want 64 needs 8
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			d.hold.mu.Lock()
			delta := 2*(i%2) - 1 // -1, +1, …: no freed signal
			d.hold.n["a"] += delta
			d.hold.total += delta
			d.hold.mu.Unlock()
		}
	}()
	defer func() { stop.Store(true); <-done }()
	for i := 0; i < 300; i++ {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		start := time.Now()
		_, ok := d.HandoffRoom(ctx, 64, time.Millisecond)
		err := ctx.Err()
		cancel()
		if ok {
			t.Fatal("HandoffRoom found room that was never there")
		}
		if err != nil {
			t.Fatalf("call %d: HandoffRoom with a wait of 1 ms returned only when its context ended, after %s", i, time.Since(start))
		}
	}
}
