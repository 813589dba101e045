package mapper

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// A jsonb document nested deeper than encoding/json's 10,000 levels is
// valid jsonb (PostgreSQL takes it), but envAny's decoder refuses the
// whole document and hands the expression the document as a string, so
// `new.details.kind` is a type error and the run stops at valid data —
// the failure the json-number fix in envAny was about, by another way.
func TestMapWhenReadsDeeplyNestedJSON(t *testing.T) {
	t.Parallel()
	docs := testRel(912, "public.docs", 'f', "id", "details")
	m := mustCompile(t, Options{},
		Rule{Event: "doc.photo", Table: "docs", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.kind == "photo"`, Data: []DataField{{Key: "id", Column: "id"}}})
	deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	evs, err := m.Map(txOf(change(cdc.OpInsert, docs, nil, map[string]any{
		"id": int64(1), "details": json.RawMessage(`{"kind": "photo", "history": ` + deep + `}`)})))
	if err != nil {
		t.Fatalf("a deeply nested jsonb document stops the run: %v", err)
	}
	if len(evs) != 1 {
		t.Errorf("%d events, want 1", len(evs))
	}
}
