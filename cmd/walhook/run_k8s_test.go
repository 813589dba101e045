package main

import (
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Two replicas of a Kubernetes Deployment (one leads, one stands by) on a
// store whose host froze (TCP accepts, nothing answers), then SIGTERM, as
// a node drain or a rolling update sends it: both exit 0 well within a
// 30 s terminationGracePeriodSeconds. The stop's own store steps are
// bounded (the release of claimed deliveries, 10 s); closing the store's
// connections at exit waited up to 15 s more for each cancel request the
// frozen server never answered.
func TestRunStopsPromptlyWithTheStoreFrozen(t *testing.T) {
	t.Parallel()
	bin := buildWalhook(t)
	db, _, store, rc, file := twoClusterItems(t, "wh_k8s_frozenstore")
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The test shares the CPUs with other tests; yielding is not what it is about.
	if _, err := f.WriteString("\ncpu:\n  yield: false\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	logA, logB := subprocessLog(t), subprocessLog(t)
	a := startSubprocess(t, bin, file, logA)
	t.Cleanup(a.kill)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "the first delivery", func() bool { return rc.Unique() == 1 }, nil)
	b := startSubprocess(t, bin, file, logB)
	t.Cleanup(b.kill)
	runWaitFor(t, 30*time.Second, "the second replica to stand by", func() bool {
		l, _ := os.ReadFile(logB)
		return strings.Contains(string(l), "another walhook process holds the replication slot")
	}, nil)
	insertItems(t, db, 2, 2)
	runWaitFor(t, 30*time.Second, "the second delivery", func() bool { return rc.Unique() == 2 }, nil)

	pids := clusterPIDs(t, store)
	var once sync.Once
	resume := func() {
		once.Do(func() {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		})
	}
	t.Cleanup(resume)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	time.Sleep(time.Second)

	const within = 20 * time.Second
	start := time.Now()
	var wg sync.WaitGroup
	for name, p := range map[string]*subprocess{"leader": a, "standby": b} {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			done := make(chan error, 1)
			go func() { done <- p.cmd.Wait() }()
			select {
			case err := <-done:
				took := time.Since(start)
				t.Logf("%s: exited after %s: %v", name, took.Round(time.Millisecond), err)
				if err != nil || took > within {
					t.Errorf("%s with the store frozen: exited after %s with %v, want exit 0 within %s of SIGTERM",
						name, took.Round(time.Millisecond), err, within)
				}
			case <-time.After(60 * time.Second):
				t.Errorf("%s with the store frozen: still running 60 s after SIGTERM", name)
				_ = p.cmd.Process.Kill()
			}
		})
	}
	wg.Wait()
	resume()
}
