package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// docs/mapping.md: "a whole numeric ... is an integer, so new.qty % 2
// works". A whole numeric beyond int64 is a float64 (envNumber), and
// __mod takes math.Mod of the rounded value: 100000000000000000001 % 2 is
// 0, not SQL's 1, so the rule silently matches the wrong rows. Before
// the rewrite this stopped the run with a rule error; a wrong remainder
// is worse than either an error or unknown.
func TestReviewModuloOfAWholeNumericBeyondInt64(t *testing.T) {
	rel := testRel(923, "public.t", 'f', "id", "big")
	m := mustCompile(t, Options{}, Rule{Event: "e", Table: "t", Ops: []cdc.Op{cdc.OpInsert}, When: `new.big % 2 == 1`, Data: []DataField{{Key: "id", Column: "id"}}})
	evs, err := m.Map(txOf(change(cdc.OpInsert, rel, nil, map[string]any{"id": int64(1), "big": json.Number("100000000000000000001")})))
	if err == nil && len(evs) == 0 && m.Stats().WhenUnknown == 0 {
		t.Errorf("100000000000000000001 %% 2 == 1 is false: the remainder of the float64-rounded value, silently")
	}
}
