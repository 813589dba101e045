package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// docs/mapping.md: "a function on a NULL ... is unknown, as in SQL, and
// the rule does not match that row", and a key a json value lacks counts
// the same. expr's keys, values, concat, flatten and uniq fail on a nil
// with "cannot get keys from invalid", "cannot concat invalid", …: those
// stopped the run at a NULL column or a missing json key. (Slicing a nil
// still does: expr says "cannot slice 0" for it as for slicing a number,
// a rule error: TestSliceOfNonListIsARuleError.)
func TestMapWhenBuiltinOnNullIsUnknown(t *testing.T) {
	t.Parallel()
	docs := testRel(913, "public.docs", 'f', "id", "tags", "details")
	for _, when := range []string{
		`len(keys(new.details.attrs)) > 0`,
		`len(values(new.details.attrs)) > 0`,
		`len(uniq(new.tags)) < len(new.tags)`,
		`len(flatten(new.tags)) > 0`,
		`len(concat(new.tags, ["x"])) > 1`,
	} {
		m := mustCompile(t, Options{}, Rule{Event: "doc.e", Table: "docs", Ops: []cdc.Op{cdc.OpInsert}, When: when, Data: []DataField{{Key: "id", Column: "id"}}})
		evs, err := m.Map(txOf(change(cdc.OpInsert, docs, nil, map[string]any{"id": int64(1), "tags": nil, "details": json.RawMessage(`{}`)})))
		if err != nil {
			t.Errorf("%s: a NULL column / missing json key stops the run: %v", when, err)
			continue
		}
		if len(evs) != 0 || m.Stats().WhenUnknown != 1 {
			t.Errorf("%s: %d events, WhenUnknown %d; want 0 and 1", when, len(evs), m.Stats().WhenUnknown)
		}
	}
}
