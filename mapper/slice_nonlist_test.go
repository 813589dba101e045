package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// Slicing a present value that is not a list (an integer column, a json
// object) is a rule error: expr says "cannot slice 0" for it as for
// slicing a nil, so that message is not taken for a nil operand (it made
// the rule silently never fire).
func TestSliceOfNonListIsARuleError(t *testing.T) {
	rel := testRel(921, "public.t", 'f', "id", "qty", "doc")
	for _, when := range []string{
		`new.qty[0:1] == [1]`,
		`new.qty[:1] == [1]`,
		`new.doc[0:1] == [1]`,
	} {
		m := mustCompile(t, Options{}, Rule{Event: "e", Table: "t", Ops: []cdc.Op{cdc.OpInsert}, When: when, Data: []DataField{{Key: "id", Column: "id"}}})
		_, err := m.Map(txOf(change(cdc.OpInsert, rel, nil, map[string]any{"id": int64(1), "qty": json.Number("5"), "doc": json.RawMessage(`{"a":1}`)})))
		if err == nil {
			t.Errorf("%s on present non-list values: no rule error (WhenUnknown %d): a type error hidden as unknown", when, m.Stats().WhenUnknown)
		}
	}
}
