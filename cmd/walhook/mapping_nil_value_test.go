package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A text value holding words nilOperand looks for ("<nil>" is what Go's
// fmt writes for a nil, "index out of range", "x is nil") is data: int()
// of it is a type error between present values, as for "abc", not an
// unknown whose explanation says the rule "reads a NULL" (expr quotes or
// writes out the value in its message).
func TestMappingTestConversionErrorOnTextSayingNilIsAnError(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(cfg, []byte("source:\n  dsn: ${DSN}\nevents:\n  - event: e\n    table: public.t\n    operations: [insert]\n    when: int(new.code) > 5\n    data: [id]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, code := range []string{`abc`, `<nil>`, `index out of range`, `x is nil`} {
		changes := writeChanges(t, `{"table":"t","op":"insert","new":{"id":1,"code":"`+code+`"}}`)
		out, errOut, exit := runCLI(t, context.Background(), "mapping", "test", "--config", cfg, "--changes", changes)
		if exit != 1 {
			t.Errorf("code %q: exit %d, want 1 (int() of a present text fails like int(\"abc\")):\n%s%s", code, exit, out, errOut)
		}
	}
}
