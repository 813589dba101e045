package main

import (
	"testing"
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
			db, rc, p := oneTableRun(t, `CREATE TABLE docs (id int PRIMARY KEY, tags text[], details jsonb);`, whenRule("public.docs", c.when))
			db.exec(t, c.empty)
			db.exec(t, c.full)
			waitDelivered(t, p, rc, 1, "the row with an element delivered")
		})
	}
}
