package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// threadPolicies counts the threads of process pid by scheduling policy.
func threadPolicies(pid int) map[uint32]int {
	got := map[uint32]int{}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return got
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if a, err := unix.SchedGetAttr(tid, 0); err == nil {
			got[a.Policy]++
		}
	}
	return got
}

// The real binary, on CPUs this test keeps busy: every walhook thread runs
// SCHED_IDLE and it defers new changes, changes written meanwhile are
// still delivered once it is cpu.max_lag behind, and SIGTERM still stops
// it cleanly.
//
// Not parallel: the busy CPUs would slow this package's other tests.
func TestRunYieldsTheCPU(t *testing.T) {
	if os.Geteuid() != 0 {
		// internal/cpuyield tests the unprivileged case: no yielding.
		t.Log("not root: walhook may not come back from SCHED_IDLE, so it must not yield")
	}
	bin := buildWalhook(t)
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{
		"endpoints":   []map[string]any{runEndpoint("r", rc.URL, runSecret)},
		"api.listen":  "off",
		"cpu.max_lag": "2s",
		// Heartbeats keep an idle walhook's lag under cpu.max_lag.
		"source.heartbeat_interval": "500ms",
	})
	logFile := subprocessLog(t)
	proc := startSubprocess(t, bin, file, logFile)
	t.Cleanup(func() { proc.kill() })
	pid := proc.cmd.Process.Pid
	logs := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	runWaitFor(t, 30*time.Second, "walhook started", func() bool { return strings.Contains(logs(), "walhook started") }, logs)

	// Busy CPUs: shell loops in processes of their own, so that this test
	// binary's goroutines are not starved along with walhook.
	stopBurn := burnCPUs(t)
	policies := func() string { return fmt.Sprintf("threads by policy: %v", threadPolicies(pid)) }

	if os.Geteuid() != 0 {
		time.Sleep(3 * time.Second)
		if p := threadPolicies(pid); p[unix.SCHED_IDLE] != 0 {
			t.Fatalf("unprivileged walhook yielded: %v", p)
		}
		stopBurn()
		return
	}
	runWaitFor(t, 30*time.Second, "every walhook thread SCHED_IDLE on busy CPUs", func() bool {
		p := threadPolicies(pid)
		return p[unix.SCHED_IDLE] > 0 && p[unix.SCHED_NORMAL] == 0
	}, policies)

	// The CPUs stay busy without walhook, so it defers new changes too,
	// until it is cpu.max_lag behind.
	runWaitFor(t, 30*time.Second, "the deferral held", func() bool { return strings.Contains(logs(), "stay busy without walhook") }, logs)
	insertItems(t, db, 1, 20)
	runWaitFor(t, 60*time.Second, "20 deliveries while the CPUs stay busy", func() bool { return rc.Unique() >= 20 }, func() string {
		return fmt.Sprintf("%d delivered; %s", rc.Unique(), policies())
	})
	for _, want := range []string{"taking new changes again", "behind=true", "taking a normal CPU share"} {
		if !strings.Contains(logs(), want) {
			t.Errorf("walhook's log lacks %q:\n%s", want, logs())
		}
	}
	stopBurn()

	if err := proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- proc.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("walhook run after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("walhook run did not stop within 30s of SIGTERM")
	}
}

// The consumer's gate: deferIntake(true) holds intakeOpen until
// deferIntake(false), a stop releases it, and the gauge follows.
func TestIntakeGate(t *testing.T) {
	r := &runner{deferredGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})}
	ctx := context.Background()
	if !r.intakeOpen(ctx) {
		t.Fatal("intake closed before any deferral")
	}
	r.deferIntake(true)
	r.deferIntake(true) // idempotent
	if g := testutil.ToFloat64(r.deferredGauge); g != 1 {
		t.Fatalf("gauge %v while deferred, want 1", g)
	}
	opened := make(chan bool, 1)
	go func() { opened <- r.intakeOpen(ctx) }()
	select {
	case <-opened:
		t.Fatal("intake open while deferred")
	case <-time.After(50 * time.Millisecond):
	}
	r.deferIntake(false)
	if !<-opened {
		t.Fatal("intakeOpen returned false after the deferral ended")
	}
	r.deferIntake(false) // idempotent
	if g := testutil.ToFloat64(r.deferredGauge); g != 0 {
		t.Fatalf("gauge %v after the deferral, want 0", g)
	}

	r.deferIntake(true)
	cctx, cancel := context.WithCancel(ctx)
	go func() { opened <- r.intakeOpen(cctx) }()
	cancel()
	if <-opened {
		t.Fatal("intakeOpen reported open when the stop came first")
	}
}

// A standby that takes the slot while cpu.yield defers intake on busy
// CPUs takes changes in once it is cpu.max_lag behind, counted from the
// takeover. Before, a term began with a lag of 0 that nothing moved (no
// transaction is read while intake is deferred), so the new leader
// deferred for as long as the CPUs stayed busy and the slot kept its WAL.
func TestRunYieldTakeoverOnBusyCPUs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: walhook does not yield, so the takeover takes changes in at once")
	}
	bin := buildWalhook(t)
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{
		"endpoints":                 []map[string]any{runEndpoint("r", rc.URL, runSecret)},
		"api.listen":                "off",
		"cpu.max_lag":               "2s",
		"source.heartbeat_interval": "500ms",
	})
	logA, logB := subprocessLog(t), subprocessLog(t)
	read := func(f string) func() string { return func() string { b, _ := os.ReadFile(f); return string(b) } }
	a := startSubprocess(t, bin, file, logA)
	t.Cleanup(func() { a.kill() })
	runWaitFor(t, 60*time.Second, "A to hold the slot", func() bool { return strings.Contains(read(logA)(), "holds the slot") }, read(logA))
	b := startSubprocess(t, bin, file, logB)
	t.Cleanup(func() { b.kill() })
	runWaitFor(t, 60*time.Second, "B to stand by", func() bool { return strings.Contains(read(logB)(), "delivering only") }, read(logB))

	burnCPUs(t)
	if os.Geteuid() == 0 {
		runWaitFor(t, 30*time.Second, "B's deferral", func() bool { return strings.Contains(read(logB)(), "stay busy without walhook") }, read(logB))
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Wait()
	runWaitFor(t, 60*time.Second, "B to hold the slot", func() bool { return strings.Contains(read(logB)(), "holds the slot") }, read(logB))
	insertItems(t, db, 1, 20)
	runWaitFor(t, 60*time.Second, "20 deliveries from B while the CPUs stay busy", func() bool { return rc.Unique() >= 20 }, read(logB))
}

// burnCPUs keeps every CPU busy with shell loops in processes of their own
// (so that the test binary's goroutines are not starved along with
// walhook) until the returned stop, or the test's end.
func burnCPUs(t *testing.T) (stop func()) {
	t.Helper()
	var burners []*exec.Cmd
	stop = func() {
		for _, c := range burners {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		burners = nil
	}
	t.Cleanup(stop)
	for range runtime.NumCPU() + 1 {
		c := exec.Command("sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		burners = append(burners, c)
	}
	return stop
}
