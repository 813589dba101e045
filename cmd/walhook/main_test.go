package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// runCLI calls Run like main does and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, ctx context.Context, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(ctx, args, &out, &errb)
	if err != nil {
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
