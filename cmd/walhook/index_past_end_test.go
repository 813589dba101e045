package main

import (
	"testing"
	"time"
)

// An empty text[] column and an empty jsonb list are valid data; the
// element a `when:` reads from them does not exist, which SQL calls NULL
// and docs/mapping.md "unknown" (no match, the run goes on). walhook
// stopped at the first row ("index out of range: 0 (array length is 0)")
// on every restart, so the second row, which matches, was never delivered.
func TestRunWhenIndexPastTheEndOfAnArray(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, when, empty, full string }{
		{"text[] column", `new.tags[0] == "vip"`, `INSERT INTO docs VALUES (1, '{}', '{}')`, `INSERT INTO docs VALUES (2, '{vip}', '{}')`},
		{"jsonb list", `new.details.photos[0].width > 100`, `INSERT INTO docs VALUES (1, '{}', '{"photos": []}')`, `INSERT INTO docs VALUES (2, '{}', '{"photos": [{"width": 200}]}')`},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			rc := newRunReceiver(t, runSecret, nil)
			db := newRunDB(t, `CREATE TABLE docs (id int PRIMARY KEY, tags text[], details jsonb);`)
			s := db.settings()
			s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
			file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: doc.matched
    table: public.docs
    operations: [insert]
    when: '`+c.when+`'
    data: [id]
`), s)
			db.setup(t, cfg)
			p := startRunProc(t, "--config", file)
			db.exec(t, c.empty)
			db.exec(t, c.full)
			runWaitFor(t, 30*time.Second, "the row with an element delivered", func() bool {
				if _, stopped := p.exited(); stopped {
					return true
				}
				return rc.Unique() == 1
			}, p.diag)
			if err, stopped := p.exited(); stopped {
				t.Fatalf("walhook run stopped on an empty array: %v", err)
			}
		})
	}
}
