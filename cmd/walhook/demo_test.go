package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/syncbuf"
)

// seed000Events are the 17 event types seed 000 lists.
var seed000Events = []string{
	"submission.created", "submission.updated",
	"inspection.created", "inspection.defect_added",
	"problem.created", "problem.status_changed", "problem.assigned", "problem.action_completed",
	"message.created", "message.edited", "message.deleted",
	"channel.created", "channel.archived",
	"member.invited", "member.joined", "member.role_changed", "member.removed",
}

// TestDemo runs `walhook demo` as a user would and checks that it prints a
// verified delivery of every seed-000 event type and, stopped as Ctrl-C
// stops it (its context canceled), exits 0 with everything removed. It is
// stopped once every type is verified, not after a fixed --duration: how
// much of one the throwaway cluster's start takes depends on the machine
// (TestDemoDurationStops covers the flag).
func TestDemo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"demo", "--duration", "3m", "--listen", "127.0.0.1:0", "--every", "2s"}, &stdout, &stderr)
	}()
	verified := regexp.MustCompile(`(?m)^✓ verified\s+(\S+)\s+id=(\S+)`)
	got := func() map[string]int {
		got := map[string]int{}
		for _, m := range verified.FindAllStringSubmatch(stdout.String(), -1) {
			got[m[1]]++
		}
		return got
	}
	var err error
	exited := false
	t.Cleanup(func() { // after a failed wait too: the demo removes what it made
		cancel()
		if !exited {
			select {
			case err = <-done:
				exited = true
			case <-time.After(60 * time.Second):
			}
		}
	})
	runWaitFor(t, 3*time.Minute, "a verified delivery of every event type", func() bool {
		select {
		case err = <-done:
			exited = true
			return true
		default:
		}
		g := got()
		for _, ev := range seed000Events {
			if g[ev] == 0 {
				return false
			}
		}
		return true
	}, func() string { return stdout.String() + stderr.String() })
	if !exited {
		cancel()
		select {
		case err = <-done:
			exited = true
		case <-time.After(60 * time.Second):
			t.Fatalf("demo did not stop within 60s of Ctrl-C\n%s", stdout.String())
		}
	}
	out, errOut := stdout.String(), stderr.String()
	if err != nil && !errors.Is(err, ErrHelpShown) {
		errOut += err.Error()
	}
	if code := ExitCode(err); code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	g := got()
	for _, ev := range seed000Events {
		if g[ev] == 0 {
			t.Errorf("no verified delivery of %s", ev)
		}
	}
	for _, want := range []string{"admin API http://", "X-API-Key: sk_demo_", "removed"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}
}

// --duration stops the demo by itself, as a clean stop: exit 0 and
// everything removed. (1ms runs out while the throwaway cluster starts.)
func TestDemoDurationStops(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, code := runCLI(t, ctx, "demo", "--duration", "1ms", "--listen", "127.0.0.1:0")
	if code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("demo --duration 1ms: exit %d, want 0 and everything removed\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestDemoSamplesMissing(t *testing.T) {
	t.Parallel()
	_, errOut, code := runCLI(t, context.Background(), "demo", "--samples", t.TempDir())
	if code != 2 || !strings.Contains(errOut, "must hold schema.sql and walhook.yaml") {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
}

// Run outside a checkout without --samples, the demo says where it looked
// and what to do.
func TestDemoSamplesNotFound(t *testing.T) {
	t.Parallel()
	wd := t.TempDir()
	_, err := samplesAbove(wd)
	want := "demo: the sample (" + sampleDir + "/schema.sql and walhook.yaml) was not found above " + wd +
		"; run the demo from a walhook checkout or pass --samples DIR"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

// The walhook binary does not link package testing: demo starts its
// cluster through internal/pgcluster, not the test helpers of pgtest.
func TestBinaryDoesNotLinkTesting(t *testing.T) {
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "testing" || pkg == "github.com/walhook/walhook/internal/pgtest" {
			t.Errorf("the walhook binary links %s", pkg)
		}
	}
	if !strings.Contains(string(out), "github.com/walhook/walhook/internal/pgcluster") {
		t.Errorf("go list -deps does not list internal/pgcluster; the check above may be looking at the wrong package:\n%s", out)
	}
}

// The demo's config is the sample's with the demo's values, cpu.yield off
// among them, and it loads.
func TestDemoConfig(t *testing.T) {
	dir, err := findSamples("")
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{dir: dir}
	file := filepath.Join(t.TempDir(), "walhook-demo.yaml")
	if err := d.writeConfig(file, "postgres://postgres@127.0.0.1:5432/demo", "127.0.0.1:0", "sk_demo_0123456789abcdef0123456789abcdef",
		"http://127.0.0.1:9/hook", dispatch.NewSecret()); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CPU.Yield {
		t.Error("cpu.yield is on in the demo's config")
	}
	if len(cfg.Endpoints) != 1 || cfg.Endpoints[0].URL != "http://127.0.0.1:9/hook" || cfg.Log.Level != "warn" {
		t.Errorf("demo config: endpoints %+v, log level %q", cfg.Endpoints, cfg.Log.Level)
	}
}

// Ctrl-C twice on the demo (an impatient user): the second does not cut
// the cleanup short, so the throwaway cluster's directory is removed (it
// was left in $TMPDIR, with exit 1).
func TestDemoCtrlCTwice(t *testing.T) {
	t.Parallel()
	bin := buildWalhook(t)
	tmp := t.TempDir()
	if err := os.Chmod(tmp, 0o755); err != nil { // the cluster runs as postgres
		t.Fatal(err)
	}
	var out syncbuf.Buffer
	cmd := exec.Command(bin, "demo", "--listen", "127.0.0.1:0", "--every", "1s", "--samples", "../../testdata/auction-excellence")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	runWaitFor(t, 90*time.Second, "a verified delivery", func() bool { return strings.Contains(out.String(), "✓ verified") }, out.String)
	for range 2 {
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo after Ctrl-C twice: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("demo did not stop\n%s", out.String())
	}
	left, _ := filepath.Glob(filepath.Join(tmp, "*"))
	if len(left) > 0 || !strings.Contains(out.String(), "removed") {
		t.Errorf("after Ctrl-C twice, left in TMPDIR: %v\n%s", left, out.String())
	}
}

// The demo's throwaway PostgreSQL trusts whoever reaches it, as the
// superuser: it must not be reachable over TCP, where any other user of
// the machine could connect (and, as superuser, run programs as the OS
// user the server runs as).
func TestDemoDatabaseNotReachableOverTCP(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	demoCtx, stopDemo := context.WithCancel(ctx)
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- Run(demoCtx, []string{"demo", "--listen", "127.0.0.1:0", "--every", "1h"}, stdout, stderr)
	}()
	defer func() {
		stopDemo()
		if err := <-done; err != nil {
			t.Errorf("demo: %v\nstderr:\n%s", err, stderr.String())
		}
	}()
	port := regexp.MustCompile(`PostgreSQL .*port (\d+)`)
	runWaitFor(t, time.Minute, "the demo's PostgreSQL", func() bool {
		return port.MatchString(stdout.String()) && strings.Contains(stdout.String(), "admin API")
	}, stdout.String)
	p := port.FindStringSubmatch(stdout.String())[1]
	conn, err := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:"+p+"/auctions?sslmode=disable&connect_timeout=5")
	if err == nil {
		conn.Close(ctx)
		t.Fatalf("connected to the demo's database over TCP as postgres without a password\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "psql -h ") {
		t.Errorf("the demo does not say how to connect to its database:\n%s", stdout.String())
	}
}
