package main

import (
	"testing"
	"time"
)

// A NULL column and a key a jsonb document lacks are "unknown" in
// `when:`, for keys() and uniq() too: they stopped the run ("cannot get
// keys from invalid", "cannot uniq invalid") at that row on every
// restart, and the second row, which matches, was never delivered.
func TestRunWhenBuiltinOnNullIsUnknown(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, when, null, full string }{
		{"keys of a missing json key", `len(keys(new.details.attrs)) > 0`,
			`INSERT INTO docs VALUES (1, NULL, '{}')`, `INSERT INTO docs VALUES (2, NULL, '{"attrs": {"color": "red"}}')`},
		{"uniq of a NULL array", `len(uniq(new.tags)) < len(new.tags)`,
			`INSERT INTO docs VALUES (1, NULL, '{}')`, `INSERT INTO docs VALUES (2, '{a,a}', '{}')`},
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
			db.exec(t, c.null)
			db.exec(t, c.full)
			runWaitFor(t, 30*time.Second, "the matching row delivered", func() bool {
				if _, stopped := p.exited(); stopped {
					return true
				}
				return rc.Unique() == 1
			}, p.diag)
			if err, stopped := p.exited(); stopped {
				t.Fatalf("walhook run stopped on a NULL: %v", err)
			}
		})
	}
}
