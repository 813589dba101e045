package main

import (
	"strings"
	"testing"
	"time"
)

// A jsonb document with a value nested 10,001 levels deep is valid jsonb
// the mapper cannot read (encoding/json stops at 10,000): unknown in
// `when:`, so its row does not match and the run goes on to the next
// document. It stopped the run ("invalid operation: int(string)") at that
// row on every restart.
func TestRunWhenDeeplyNestedJSONIsUnknown(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE docs (id int PRIMARY KEY, details jsonb);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: doc.photo
    table: public.docs
    operations: [insert]
    when: new.details.kind == "photo"
    data: [id]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	db.exec(t, `INSERT INTO docs VALUES (1, $1::jsonb)`, `{"kind": "photo", "history": `+deep+`}`)
	db.exec(t, `INSERT INTO docs VALUES (2, '{"kind": "photo"}')`)
	runWaitFor(t, 30*time.Second, "the second photo delivered", func() bool {
		if _, stopped := p.exited(); stopped {
			return true
		}
		return rc.Unique() == 1
	}, p.diag)
	if err, stopped := p.exited(); stopped {
		t.Fatalf("walhook run stopped on a valid jsonb document: %v", err)
	}
}
