package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// runCLI calls Run like main does and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, ctx context.Context, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(ctx, args, &out, &errb)
	if err != nil && !errors.Is(err, ErrHelpShown) { // as main prints it
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), ExitCode(err)
}

func TestVersionAndUsage(t *testing.T) {
	t.Parallel()
	out, _, code := runCLI(t, context.Background(), "version")
	if code != 0 || !bytes.Contains([]byte(out), []byte("walhook ")) {
		t.Fatalf("version: code %d, out %q", code, out)
	}
	_, errOut, code := runCLI(t, context.Background(), "frobnicate")
	if code != 2 || !bytes.Contains([]byte(errOut), []byte(`unknown command "frobnicate"`)) {
		t.Fatalf("unknown command: code %d, err %q", code, errOut)
	}
	_, _, code = runCLI(t, context.Background())
	if code != 2 {
		t.Fatalf("no command: code %d, want 2", code)
	}
}

// walhook's GC defaults apply only where the environment sets none.
func TestTuneGC(t *testing.T) {
	oldPercent := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(math.MaxInt64)
	defer func() {
		debug.SetGCPercent(oldPercent)
		debug.SetMemoryLimit(oldLimit)
	}()
	tuneGC(func(string) string { return "" })
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, defaultGCPercent)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != defaultMemoryLimit {
		t.Errorf("GOMEMLIMIT unset: memory limit %d, want %d", got, defaultMemoryLimit)
	}
	env := map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}
	tuneGC(func(k string) string { return env[k] })
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC set: GC percent changed to %d", got)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT set: memory limit changed to %d", got)
	}
}

// Asking a command for its help is not an error: the help is printed and
// the exit code is 0.
func TestSubcommandHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"run", "--help"}, {"check", "-h"}, {"setup", "--help"}, {"teardown", "--help"},
		{"demo", "--help"}, {"receive", "--help"}, {"mapping", "test", "--help"}, {"mapping", "--help"},
	} {
		out, errOut, code := runCLI(t, context.Background(), args...)
		if code != 0 {
			t.Errorf("walhook %s: exit %d, want 0\n%s", strings.Join(args, " "), code, errOut)
		}
		if help := out + errOut; !strings.Contains(help, "Usage") {
			t.Errorf("walhook %s printed no help:\n%s", strings.Join(args, " "), help)
		}
		if strings.Contains(errOut, "help shown") || strings.Contains(errOut, "help requested") {
			t.Errorf("walhook %s reported the help as an error:\n%s", strings.Join(args, " "), errOut)
		}
	}
}
