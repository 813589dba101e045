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
	tuneGC(func(string) string { return "" }, 0)
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, defaultGCPercent)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != defaultMemoryLimit {
		t.Errorf("GOMEMLIMIT unset: memory limit %d, want %d", got, defaultMemoryLimit)
	}
	// A container limit of 256 MiB (a Kubernetes resources.limits.memory):
	// the soft limit goes under it, not 512 MiB above it.
	tuneGC(func(string) string { return "" }, 256<<20)
	if got, want := debug.SetMemoryLimit(math.MaxInt64), int64(256<<20)/10*8; got != want {
		t.Errorf("GOMEMLIMIT unset, container limit 256 MiB: memory limit %d, want %d", got, want)
	}
	// A generous one leaves the default.
	tuneGC(func(string) string { return "" }, 4<<30)
	if got := debug.SetMemoryLimit(math.MaxInt64); got != defaultMemoryLimit {
		t.Errorf("GOMEMLIMIT unset, container limit 4 GiB: memory limit %d, want %d", got, defaultMemoryLimit)
	}
	debug.SetGCPercent(100)
	env := map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}
	tuneGC(func(k string) string { return env[k] }, 256<<20)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC set: GC percent changed to %d", got)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT set: memory limit changed to %d", got)
	}
}

// Asking a command for its help is not an error: the help is printed on
// stdout (walhook run --help | less) and the exit code is 0.
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
		if !strings.Contains(out, "Usage") || errOut != "" {
			t.Errorf("walhook %s: want the help on stdout and nothing on stderr; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out, errOut)
		}
		if strings.Contains(errOut, "help shown") || strings.Contains(errOut, "help requested") {
			t.Errorf("walhook %s reported the help as an error:\n%s", strings.Join(args, " "), errOut)
		}
	}
}

// Bad usage is refused with exit 2 and a message that says what is wrong,
// before anything is read or started: a flag given twice (which one would
// win?), arguments to a command that takes none, flags before the command,
// durations the demo cannot use.
func TestBadUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--config", "a.yaml", "--config", "b.yaml"}, "--config given twice"},
		{[]string{"teardown", "--config", "a.yaml", "--force", "-force"}, "--force given twice"},
		{[]string{"setup", "--skip-to=0/1", "--skip-to", "0/2"}, "--skip-to given twice"},
		{[]string{"version", "extra"}, `walhook version: unexpected argument "extra"`},
		{[]string{"help", "run"}, `walhook help: unexpected argument "run" (for a command's help: walhook run --help)`},
		{[]string{"--config", "a.yaml", "check"}, `the command comes first: walhook check --config …`},
		{[]string{"-config=a.yaml"}, `the command comes first: walhook <command> -config=a.yaml`},
		{[]string{"demo", "--duration", "-5s"}, "--duration must not be negative, got -5s"},
		{[]string{"demo", "--every", "0s"}, "--every must be positive, got 0s"},
		{[]string{"demo", "--listen", "8080"}, `--listen must be host:port (e.g. 127.0.0.1:8080), got "8080"`},
		{[]string{"check", "--config", "a.yaml", "extra"}, `walhook check: unexpected argument "extra"`},
		{[]string{"setup", "--skip-to", "0/1", "--replica-identity"}, "setup: --skip-to and --replica-identity do not go together: --skip-to changes nothing but the cursor"},
		{[]string{"check", "--config", " "}, "no config: pass --config FILE or set WALHOOK_CONFIG"},
		{[]string{"mapping", "test", "--config", " ", "--changes", "c.jsonl"}, "no config: pass --config FILE or set WALHOOK_CONFIG"},
		{[]string{"check", "--config", dir}, "read config: read " + dir + ": is a directory"},
		{[]string{"receive", "--secret", "whsec_nope"}, `receive: --secret: receiver secret 1 of 1: invalid webhook secret: key is 3 bytes, want 24 to 64`},
		{[]string{"receive", "--secret", runSecret + ","}, "receive: --secret: receiver secret 2 of 2: invalid webhook secret: empty"},
		{[]string{"receive", "--secret", runSecret, "--listen", "9000"}, `receive: --listen must be host:port (e.g. 127.0.0.1:9000), got "9000"`},
	} {
		out, errOut, code := runCLI(t, context.Background(), tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("walhook %s: exit %d, stderr %q; want 2 and %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
		if out != "" {
			t.Errorf("walhook %s: printed %q on stdout", strings.Join(tc.args, " "), out)
		}
		if strings.Contains(errOut, "panic") || strings.Contains(errOut, "-config value") {
			t.Errorf("walhook %s: the usage lost its flags' types:\n%s", strings.Join(tc.args, " "), errOut)
		}
	}
}

// With nothing on the command line, the environment is read; empty, the
// message names both ways to give the value.
func TestNothingFromTheEnvironment(t *testing.T) {
	t.Setenv("WALHOOK_CONFIG", "")
	t.Setenv("WALHOOK_RECEIVER_SECRET", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check"}, "no config: pass --config FILE or set WALHOOK_CONFIG"},
		{[]string{"run"}, "no config: pass --config FILE or set WALHOOK_CONFIG"},
		{[]string{"mapping", "test", "--changes", "c.jsonl"}, "no config: pass --config FILE or set WALHOOK_CONFIG"},
		{[]string{"receive"}, "receive: --secret or $WALHOOK_RECEIVER_SECRET is required"},
	} {
		out, errOut, code := runCLI(t, context.Background(), tc.args...)
		if code != 2 || !strings.HasSuffix(errOut, tc.want) || out != "" {
			t.Errorf("walhook %s: exit %d, stdout %q, stderr %q; want 2 and %q", strings.Join(tc.args, " "), code, out, errOut, tc.want)
		}
	}
	// A bad secret there is named as coming from there.
	t.Setenv("WALHOOK_RECEIVER_SECRET", "whsec_nope")
	_, errOut, code := runCLI(t, context.Background(), "receive")
	if want := "receive: $WALHOOK_RECEIVER_SECRET: receiver secret 1 of 1: invalid webhook secret"; code != 2 || !strings.Contains(errOut, want) {
		t.Errorf("bad secret from the environment: exit %d, stderr %q; want 2 and %q", code, errOut, want)
	}
}
