package main

import (
	"testing"
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
			db, rc, p := oneTableRun(t, `CREATE TABLE docs (id int PRIMARY KEY, tags text[], details jsonb);`, whenRule("public.docs", c.when))
			db.exec(t, c.null)
			db.exec(t, c.full)
			waitDelivered(t, p, rc, 1, "the matching row delivered")
		})
	}
}
