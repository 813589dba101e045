package main

import (
	"strings"
	"testing"
)

// store.schema naming an application's schema (one holding its tables
// and no walhook schema_version): setup refuses it (it would put
// walhook's tables among the application's), but check failed its line
// with "exists, but holds no walhook store yet — fix: walhook setup" and
// ended "not ready: run walhook setup", sending the operator to the very
// command that refuses. check says what setup says, with its fix.
func TestCheckNamesAStoreSchemaThatIsNotAStore(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, runItemsSchema+`CREATE SCHEMA app; CREATE TABLE app.customers (id int PRIMARY KEY);`)
	s := db.settings()
	s["store.schema"] = "app"
	file, _ := runConfig(t, []byte(runItemsConfig), s)
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `FAIL  store schema app: holds customers but no walhook schema_version \(another application's schema, or a store made in part by hand\), so walhook setup refuses it — fix: set store\.schema to a schema of walhook's own`)
	ckNoLines(t, out, `.*store schema app: .*fix: walhook setup$`, `not ready: run walhook setup`)
	_, errOut, code := pubCLI(t, "setup", "--config", file)
	if code != 1 || !strings.Contains(errOut, `schema "app" holds customers but no walhook schema_version`) {
		t.Fatalf("setup exit %d, want the refusal of schema app", code)
	}
}
