package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// A numeric column's values are numbers in `when:`, and `%` works on all
// of them: a whole numeric written with a scale (4.0, 4.00) is an
// integer, a json number or a fractional numeric gets the float remainder
// (modToFunc). expr's own % took integers only, so the run stopped at the
// row whose qty was 4.0 (the same value as 4), on every restart.
func TestMapWhenModuloOnNumericValues(t *testing.T) {
	t.Parallel()
	bids := testRel(910, "public.bids", 'f', "id", "qty", "details")
	m := mustCompile(t, Options{},
		Rule{Event: "bid.even", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.qty % 2 == 0`, Data: []DataField{{Key: "id", Column: "id"}}},
		Rule{Event: "bid.even_lots", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.lots % 2 == 0`, Data: []DataField{{Key: "id", Column: "id"}}},
	)
	for _, c := range []struct {
		name      string
		qty, lots any
		want      int // -1: any number of events, as long as the run goes on
	}{
		{"numeric 4", json.Number("4"), json.RawMessage(`{"lots": 4}`), 2},
		{"numeric 4.0", json.Number("4.0"), json.RawMessage(`{"lots": 4.0}`), 2},
		{"numeric 4.00", json.Number("4.00"), json.RawMessage(`{"lots": 4.00}`), 2},
	} {
		evs, err := m.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "qty": c.qty, "details": c.lots})))
		if err != nil {
			t.Errorf("%s: the run stops at a valid numeric value: %v", c.name, err)
			continue
		}
		if c.want >= 0 && len(evs) != c.want {
			t.Errorf("%s: %d events, want %d (%s)", c.name, len(evs), c.want, summary(evs))
		}
	}
}
