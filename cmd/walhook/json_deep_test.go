package main

import (
	"strings"
	"testing"
)

// A jsonb document with a value nested 10,001 levels deep is valid jsonb
// the mapper cannot read (encoding/json stops at 10,000): unknown in
// `when:`, so its row does not match and the run goes on to the next
// document. It stopped the run ("invalid operation: int(string)") at that
// row on every restart.
func TestRunWhenDeeplyNestedJSONIsUnknown(t *testing.T) {
	t.Parallel()
	db, rc, p := oneTableRun(t, `CREATE TABLE docs (id int PRIMARY KEY, details jsonb);`, whenRule("public.docs", `new.details.kind == "photo"`))
	deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	db.exec(t, `INSERT INTO docs VALUES (1, $1::jsonb)`, `{"kind": "photo", "history": `+deep+`}`)
	db.exec(t, `INSERT INTO docs VALUES (2, '{"kind": "photo"}')`)
	waitDelivered(t, p, rc, 1, "the second photo delivered")
}
