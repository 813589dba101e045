package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// A column whose name has a space ("Problem Title", legal and common in
// schemas that came from elsewhere) can be named in data, changed and
// auction_id (the config refused it as "not a column"), as mixed-case
// names and table names with spaces could; when: reads it as
// new["Problem Title"].
func TestRuleNamesAColumnWithASpace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE reports (id int PRIMARY KEY, "Problem Title" text, status text);
		ALTER TABLE reports REPLICA IDENTITY FULL;`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	// Written with a placeholder column (runConfig loads the file), then
	// the column with the space put in its place.
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: report.retitled
    table: public.reports
    operations: [update]
    changed: [status]
    data:
      - id
      - title: status
`), s)
	db.setup(t, cfg)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	yml := strings.Replace(string(b), "title: status", "title: Problem Title", 1)
	yml = strings.Replace(yml, "changed: [status]", `changed: ["Problem Title"]`, 1)
	if !strings.Contains(yml, `changed: ["Problem Title"]`) || !strings.Contains(yml, "title: Problem Title") {
		t.Fatalf("placeholders not found in\n%s", b)
	}
	if err := os.WriteFile(file, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check: exit %d, want 0 (the rule names a column the table has)\n%s%s", code, out, errOut)
	}
	db.exec(t, `INSERT INTO reports VALUES (1, 'Lot 17 short', 'open')`)
	p := startRunProc(t, "--config", file)
	db.exec(t, `UPDATE reports SET "Problem Title" = 'Lot 17 short two' WHERE id = 1`)
	runWaitFor(t, 30*time.Second, "the retitle delivered", func() bool { return rc.Unique() == 1 }, p.diag)
	data, _ := runBody(t, rc.deliveries()[0].Body)["data"].(map[string]any)
	if data["title"] != "Lot 17 short two" {
		t.Errorf("data %v, want title \"Lot 17 short two\"", data)
	}
}
