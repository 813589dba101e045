package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// A whole numeric beyond int64 is a float64 that no longer holds it
// exactly: its % is refused (a rule error, as it was before % took
// floats), not a remainder of the rounded value (100000000000000000001 %
// 2 gave 0, not SQL's 1, and the rule matched the wrong rows silently).
func TestModuloOfAWholeNumericBeyondInt64(t *testing.T) {
	rel := testRel(923, "public.t", 'f', "id", "big")
	m := mustCompile(t, Options{}, Rule{Event: "e", Table: "t", Ops: []cdc.Op{cdc.OpInsert}, When: `new.big % 2 == 1`, Data: []DataField{{Key: "id", Column: "id"}}})
	evs, err := m.Map(txOf(change(cdc.OpInsert, rel, nil, map[string]any{"id": int64(1), "big": json.Number("100000000000000000001")})))
	if err == nil && len(evs) == 0 && m.Stats().WhenUnknown == 0 {
		t.Errorf("100000000000000000001 %% 2 == 1 is false: the remainder of the float64-rounded value, silently")
	}
}
