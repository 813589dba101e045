package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/receiver"
)

// `nohup walhook run` (or any start with SIGHUP ignored) must survive a
// hangup: that is what ignoring it asks for, and Go keeps an inherited
// ignored SIGHUP ignored unless the program calls signal.Notify for it.
// stopOnSignals now always does, so a closed terminal stops a nohup'd
// walhook.
func TestReviewRunIgnoredSIGHUP(t *testing.T) {
	t.Parallel()
	bin := buildWalhook(t)
	rc := newRunReceiver(t, runSecret, func(receiver.Delivery) int { return 200 })
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
	// As nohup starts it: SIGHUP ignored (SIG_IGN is inherited by exec).
	cmd := exec.Command("sh", "-c", `trap '' HUP; exec "$0" run --config "$1"`, bin, file)
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
	select {
	case err := <-done:
		b, _ := os.ReadFile(logFile)
		t.Fatalf("started with SIGHUP ignored (nohup), walhook stopped at a SIGHUP (%v); log:\n%s", err, b)
	case <-time.After(3 * time.Second):
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	<-done
}
