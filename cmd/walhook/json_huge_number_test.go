package main

import (
	"testing"
)

// A jsonb document with one number beyond float64's range (valid jsonb:
// its numbers are numeric) is still a map in `when:` (docs/mapping.md:
// "json/jsonb are maps and lists"): json.Unmarshal failed on the whole
// document, which reached the expression as a string, a type error that
// stopped the run at valid data on every restart.
func TestRunWhenReadsJSONWithANumberBeyondFloat64(t *testing.T) {
	t.Parallel()
	db, rc, p := oneTableRun(t, `CREATE TABLE docs (id int PRIMARY KEY, details jsonb);`, whenRule("public.docs", "len(new.details.photos) > 0"))
	// serial is 1 followed by 400 zeros: a valid jsonb number.
	db.exec(t, `INSERT INTO docs VALUES (1, '{"photos": ["a.jpg"], "serial": 1e400}')`)
	db.exec(t, `INSERT INTO docs VALUES (2, '{"photos": ["b.jpg"]}')`)
	waitDelivered(t, p, rc, 2, "both documents with photos delivered")
}
