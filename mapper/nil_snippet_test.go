package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// nilOperand reads expr's error message, not Error(), which quotes the
// expression's source: a string literal holding one of its patterns made
// any run-time error unknown (here a % by zero, which stops the run).
func TestNilOperandIgnoresTheSourceSnippet(t *testing.T) {
	rel := testRel(922, "public.t", 'f', "id", "note", "qty", "div")
	for _, when := range []string{
		`new.note != "input invalid (x)" && new.qty % new.div == 0`,
		`new.note != "index out of range" && new.qty % new.div == 0`,
		`new.note != "cannot slice 0" && new.qty % new.div == 0`,
	} {
		m := mustCompile(t, Options{}, Rule{Event: "e", Table: "t", Ops: []cdc.Op{cdc.OpInsert}, When: when, Data: []DataField{{Key: "id", Column: "id"}}})
		_, err := m.Map(txOf(change(cdc.OpInsert, rel, nil, map[string]any{"id": int64(1), "note": "n", "qty": json.Number("5"), "div": json.Number("0")})))
		if err == nil {
			t.Errorf("%s: a division by zero on present values is unknown (WhenUnknown %d), not a rule error", when, m.Stats().WhenUnknown)
		}
	}
}
