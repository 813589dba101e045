package main

import (
	"testing"
	"time"
)

// A jsonb document with one number beyond float64's range (valid jsonb:
// its numbers are numeric) must still be a map in `when:` (docs/mapping.md:
// "json/jsonb are maps and lists (len(new.details.photos) > 0)"). Today
// envAny's json.Unmarshal fails on the whole document and hands the
// expression the document as a string, so `new.details.photos` is a type
// error: the run stops at valid data, and stops there again on every
// restart.
func TestRunWhenReadsJSONWithANumberBeyondFloat64(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE docs (id int PRIMARY KEY, details jsonb);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: doc.with_photos
    table: public.docs
    operations: [insert]
    when: len(new.details.photos) > 0
    data: [id]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	// serial is 1 followed by 400 zeros: a valid jsonb number.
	db.exec(t, `INSERT INTO docs VALUES (1, '{"photos": ["a.jpg"], "serial": 1e400}')`)
	db.exec(t, `INSERT INTO docs VALUES (2, '{"photos": ["b.jpg"]}')`)
	runWaitFor(t, 30*time.Second, "both documents with photos delivered", func() bool {
		if _, stopped := p.exited(); stopped {
			return true
		}
		return rc.Unique() == 2
	}, p.diag)
	if err, stopped := p.exited(); stopped {
		t.Fatalf("walhook run stopped on a valid jsonb document: %v", err)
	}
}
