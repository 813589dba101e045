package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/receiver"
)

// The real binary and its signals. SIGHUP stops it gracefully, as SIGTERM
// does (it died of it, mid-attempt), also when two come. A second SIGTERM
// during a graceful stop that waits on a receiver that hangs exits at once
// with status 1 and says so (it could not be hurried).
func TestRunSignals(t *testing.T) {
	t.Parallel()
	bin := buildWalhook(t)
	hang := make(chan struct{})
	var hanging atomic.Bool
	rc := newRunReceiver(t, runSecret, func(d receiver.Delivery) int {
		if strings.Contains(string(d.Body), `"id":2`) {
			hanging.Store(true)
			<-hang
		}
		return 200
	})
	t.Cleanup(func() { close(hang) })
	db, file := itemsRun(t, map[string]any{
		"endpoints":        []map[string]any{runEndpoint("r", rc.URL, runSecret)},
		"api.listen":       "off",
		"log.level":        "info",
		"delivery.timeout": "60s",
		"delivery.lease":   "90s",
		"cpu.yield":        false,
	})
	logFile := subprocessLog(t)
	exited := func(p *subprocess) (error, bool) {
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			return err, true
		case <-time.After(30 * time.Second):
			return nil, false
		}
	}

	p := startSubprocess(t, bin, file, logFile)
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "the first delivery", func() bool { return rc.Unique() == 1 }, func() string { return "" })
	// Twice, as a closing terminal may: a SIGHUP never forces the exit.
	for range 2 {
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	if err, ok := exited(p); !ok || err != nil {
		t.Fatalf("after SIGHUP: exited %v with %v, want a graceful stop, exit 0", ok, err)
	}
	if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), `msg="walhook stopped"`) {
		t.Error("SIGHUP: no graceful stop in the log")
	}

	p = startSubprocess(t, bin, file, logFile)
	t.Cleanup(func() { _ = p.cmd.Process.Kill() })
	insertItems(t, db, 2, 2)
	runWaitFor(t, 30*time.Second, "the attempt that hangs", hanging.Load, func() string { return "" })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // into the graceful stop, which waits for the attempt
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err, ok := exited(p)
	var ee *exec.ExitError
	if !ok || !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("after a second SIGTERM: exited %v with %v, want exit 1 at once", ok, err)
	}
	if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), "walhook: terminated again: exiting now, without finishing the graceful stop") {
		t.Error("the second SIGTERM did not say what it did")
	}
}

// Started with SIGHUP ignored (nohup, or trap ” HUP), walhook keeps it
// ignored: a hangup does not stop it. (signal.Notify for SIGHUP undoes an
// inherited SIG_IGN.)
func TestRunKeepsSIGHUPIgnored(t *testing.T) {
	t.Parallel()
	bin := buildWalhook(t)
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{
		"endpoints":  []map[string]any{runEndpoint("r", rc.URL, runSecret)},
		"api.listen": "off", "log.level": "info", "cpu.yield": false,
	})
	logFile := subprocessLog(t)
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sh", "-c", `trap '' HUP; exec "$0" run --config "$1"`, bin, file) // SIG_IGN is inherited by exec
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "the first delivery", func() bool { return rc.Unique() == 1 }, func() string { return "" })
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	insertItems(t, db, 2, 2)
	runWaitFor(t, 30*time.Second, "a delivery after the hangup", func() bool {
		select {
		case err := <-done:
			b, _ := os.ReadFile(logFile)
			t.Fatalf("walhook stopped at a SIGHUP it was started ignoring (%v); log:\n%s", err, b)
		default:
		}
		return rc.Unique() == 2
	}, func() string { return "" })
	_ = cmd.Process.Signal(syscall.SIGTERM)
	<-done
}
