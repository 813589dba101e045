//go:build linux

package cpuyield

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/walhook/walhook/internal/syncbuf"
)

// allThreads reports whether every thread of this process has the policy.
func allThreads(t *testing.T, want uint32) (bool, string) {
	t.Helper()
	tids, err := threads()
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		p, err := threadPolicy(tid)
		if err != nil {
			continue // exited meanwhile
		}
		if p.policy != want {
			return false, fmt.Sprintf("%s (thread %d)", p, tid)
		}
	}
	return true, ""
}

func waitThreads(t *testing.T, want uint32, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, got := allThreads(t, want)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: a thread is still %s", what, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunSwitchesEveryThread drives the controller of this test process
// with a made-up busy measure and lag and reads every thread's policy back
// from the kernel.
func TestRunSwitchesEveryThread(t *testing.T) {
	if err := probeRestore(); err != nil {
		// Only a process that may come back from SCHED_IDLE yields.
		if os.Geteuid() == 0 {
			t.Fatalf("root could not leave SCHED_IDLE: %v", err)
		}
		var logs syncbuf.Buffer
		err := Run(context.Background(), Options{MaxLag: time.Minute, Lag: func() time.Duration { return 0 },
			Log: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil || !strings.Contains(logs.String(), "CAP_SYS_NICE") {
			t.Fatalf("Run without the right to come back: err %v, logs %s", err, logs.String())
		}
		waitThreads(t, policyNormal, "unprivileged")
		return
	}

	var busy atomic.Int64 // percent
	var lag atomic.Int64
	var yielding atomic.Bool
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			MaxLag:   time.Minute,
			Lag:      func() time.Duration { return time.Duration(lag.Load()) },
			Interval: 20 * time.Millisecond,
			Log:      slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Yielding: yielding.Store,
			busy:     func() (load, bool) { return load{busy: float64(busy.Load()) / 100}, true },
		})
	}()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	defer stop()

	busy.Store(95)
	waitThreads(t, policyIdle, "CPUs busy")
	waitFor(t, "Yielding(true)", yielding.Load)

	// A thread the runtime starts now inherits SCHED_IDLE from the thread
	// that starts it; the controller's next round catches any it missed.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			time.Sleep(50 * time.Millisecond)
		}()
	}
	wg.Wait()
	waitThreads(t, policyIdle, "after new threads")

	lag.Store(int64(2 * time.Minute))
	waitThreads(t, policyNormal, "behind by more than MaxLag")
	if !strings.Contains(logs.String(), "taking a normal CPU share") {
		t.Fatalf("no log line for falling behind:\n%s", logs.String())
	}
	lag.Store(int64(10 * time.Second))
	waitThreads(t, policyIdle, "caught up")
	if !strings.Contains(logs.String(), "caught up") {
		t.Fatalf("no log line for catching up:\n%s", logs.String())
	}

	busy.Store(40)
	waitThreads(t, policyNormal, "CPUs to spare")
	busy.Store(95)
	waitThreads(t, policyIdle, "busy again")

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	waitThreads(t, policyNormal, "after Run returned")
	if yielding.Load() {
		t.Fatal("Yielding(false) was not called when Run returned")
	}
}

// TestRunLeavesAnOperatorsPolicyAlone: a process started under another
// policy (here SCHED_BATCH, as chrt -b would) keeps it.
func TestRunLeavesAnOperatorsPolicyAlone(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}, 0); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := setThread(0, false); err != nil {
			t.Fatal(err)
		}
	}()
	var logs syncbuf.Buffer
	var busyCalled atomic.Bool
	err := Run(context.Background(), Options{MaxLag: time.Minute, Lag: func() time.Duration { return 0 },
		Log:  slog.New(slog.NewTextHandler(&logs, nil)),
		busy: func() (load, bool) { busyCalled.Store(true); return load{busy: 1}, true }})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "left as it is") || !strings.Contains(logs.String(), "batch") {
		t.Fatalf("logs: %s", logs.String())
	}
	p, err := threadPolicy(0)
	if err != nil || p.policy != unix.SCHED_BATCH {
		t.Fatalf("policy after Run: %v, %v; want batch", p, err)
	}
	if busyCalled.Load() {
		t.Fatal("Run measured the CPUs although it does not act")
	}
}

// TestRunDefers drives Run with a made-up machine whose load depends on
// whether walhook takes new changes, and follows Defer.
func TestRunDefers(t *testing.T) {
	if err := probeRestore(); err != nil {
		var deferred atomic.Bool
		err := Run(context.Background(), Options{MaxLag: time.Minute, Lag: func() time.Duration { return 0 },
			Log: slog.New(slog.DiscardHandler), Defer: deferred.Store})
		if err != nil || deferred.Load() {
			t.Fatalf("Run without the right to come back: err %v, deferred %v", err, deferred.Load())
		}
		return
	}
	var (
		others   atomic.Int64 // percent busy with other processes while walhook takes changes
		paused   atomic.Int64 // percent busy while walhook pauses
		lag      atomic.Int64
		deferred atomic.Bool
		changes  atomic.Int64 // calls of Defer
		logs     syncbuf.Buffer
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			MaxLag:   time.Minute,
			Lag:      func() time.Duration { return time.Duration(lag.Load()) },
			Interval: 20 * time.Millisecond,
			Log:      slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Defer: func(on bool) {
				if deferred.Swap(on) == on {
					t.Errorf("Defer(%v) twice in a row", on)
				}
				changes.Add(1)
			},
			busy: func() (load, bool) {
				if deferred.Load() {
					return load{busy: float64(paused.Load()) / 100}, true
				}
				// Taking changes, walhook fills what the others leave.
				return load{busy: 1, own: 1 - float64(others.Load())/100}, true
			},
		})
	}()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	defer stop()

	// Another process keeps the CPUs busy: defer, and say so once it holds.
	others.Store(97)
	paused.Store(97)
	waitFor(t, "Defer(true)", deferred.Load)
	waitFor(t, "the deferral held", func() bool { return strings.Contains(logs.String(), "stay busy without walhook") })

	// MaxLag behind: take changes again, and defer again once caught up.
	lag.Store(int64(2 * time.Minute))
	waitFor(t, "Defer(false) once behind", func() bool { return !deferred.Load() })
	if !strings.Contains(logs.String(), "taking new changes again") || !strings.Contains(logs.String(), "behind=true") {
		t.Fatalf("no log line for ending the deferral behind:\n%s", logs.String())
	}
	lag.Store(int64(10 * time.Second))
	waitFor(t, "Defer(true) once caught up", deferred.Load)

	// The others stop: take changes again.
	others.Store(20)
	paused.Store(20)
	waitFor(t, "Defer(false) with CPUs to spare", func() bool { return !deferred.Load() })

	// Load that is walhook's own (others at 85 % only while it takes
	// changes, 20 % once it pauses): a probe, then a back-off of
	// firstBackoff intervals without another.
	n := changes.Load()
	others.Store(85)
	waitFor(t, "the probe ends", func() bool { return changes.Load() >= n+2 })
	if !strings.Contains(logs.String(), "the load was its own") {
		t.Fatalf("no log line for the missed probe:\n%s", logs.String())
	}
	n = changes.Load()
	time.Sleep(time.Duration(firstBackoff/2) * 20 * time.Millisecond)
	if changes.Load() != n {
		t.Fatalf("probed again within half the back-off:\n%s", logs.String())
	}
	waitFor(t, "the next probe after the back-off", deferred.Load)

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if deferred.Load() {
		t.Fatal("Defer(false) was not called when Run returned")
	}
	waitThreads(t, policyNormal, "after Run returned")
}
