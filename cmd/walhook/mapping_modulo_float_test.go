package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// docs/mapping.md: "`%` works on every number, as in SQL: `new.qty % 2`,
// `4.5 % 2` is `0.5`". A % whose operand is a float in the expression (a
// float literal, a `/`) loads in mapping test, check and run alike: the
// load-time check ran expr's own %, integers only, and refused it.
func TestMappingTestModuloWithFloatOperandLoads(t *testing.T) {
	t.Parallel()
	for _, when := range []string{
		`4.5 % 2 == 0.5`,
		`new.price % 2.5 == 0`,
		`(new.price / 2) % 1 == 0.5`,
	} {
		cfg := filepath.Join(t.TempDir(), "walhook.yaml")
		if err := os.WriteFile(cfg, []byte("source:\n  dsn: ${DSN}\nevents:\n  - event: e\n    table: public.t\n    operations: [insert]\n    when: '"+when+"'\n    data: [id]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		changes := writeChanges(t, `{"table":"t","op":"insert","new":{"id":1,"price":5}}`)
		out, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", cfg, "--changes", changes)
		if code != 0 {
			t.Errorf("%s: exit %d, want 0 (docs: %% works on every number):\n%s%s", when, code, out, errOut)
		}
	}
}
