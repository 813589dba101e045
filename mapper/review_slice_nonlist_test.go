package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// nilOperand takes "cannot slice 0" for a nil operand, but expr's
// runtime.Slice formats the *start index*, not the value: slicing any
// value that is not a list or string from 0 (an integer column, a json
// object) says "cannot slice 0" too. A rule error on present data
// (`new.qty[:2]` where qty is an integer) is then counted as unknown on
// every row and the rule silently never fires; `new.qty[1:2]` on the same
// row stops the run with the rule error, as it should.
func TestReviewSliceOfNonListIsARuleError(t *testing.T) {
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
