package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// nilOperand looks for "<nil>", " is nil", "index out of range"… in expr's
// message, and some messages quote the data: int("abc") says
// `strconv.Atoi: parsing "abc": invalid syntax`. A text value that holds
// such words ("<nil>" is what Go's fmt writes for a nil) turns a type
// error between present values, which stops the run for every other
// text, into "unknown", and the explanation says the rule "reads a NULL".
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
