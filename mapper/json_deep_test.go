package mapper

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// A jsonb document nested deeper than encoding/json's 10,000 levels is
// valid jsonb (PostgreSQL takes it) that the mapper cannot read: it is
// unknown in `when:`, as a NULL is, so the rule does not match that row
// and the run goes on. It reached the expression as a string, a type error
// that stopped the run at valid data.
func TestMapWhenDeeplyNestedJSONIsUnknown(t *testing.T) {
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
	if len(evs) != 0 || m.Stats().WhenUnknown != 1 {
		t.Errorf("%d events, %d unknown; want none, and the when unknown", len(evs), m.Stats().WhenUnknown)
	}
}
