package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
// SCHED_IDLE, changes written meanwhile are still delivered (from the time
// idle priority leaves, or at normal priority once cpu.max_lag behind),
// and SIGTERM still stops it cleanly.
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
	var burners []*exec.Cmd
	stopBurn := func() {
		for _, c := range burners {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		burners = nil
	}
	defer stopBurn()
	for range runtime.NumCPU() + 1 {
		c := exec.Command("sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		burners = append(burners, c)
	}
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

	insertItems(t, db, 1, 20)
	runWaitFor(t, 60*time.Second, "20 deliveries while the CPUs stay busy", func() bool { return rc.Unique() >= 20 }, func() string {
		return fmt.Sprintf("%d delivered; %s", rc.Unique(), policies())
	})
	// Idle priority still gets a trickle of CPU, so whether walhook fell
	// cpu.max_lag behind first depends on the machine; internal/cpuyield
	// tests that bound with the threads' real policies.
	t.Logf("fell behind by cpu.max_lag first: %v", strings.Contains(logs(), "taking a normal CPU share"))
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
