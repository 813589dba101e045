package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// A numeric column's values are numbers in `when:` (docs/mapping.md,
// "integers and numeric are numbers"), but envNumber makes the integral
// ones int64 and every other one float64, per row. expr's % takes
// integers only, so `new.qty % 2 == 0` maps the row whose qty is 4 and
// stops the run at the row whose qty is 4.0 — the same value, valid data
// of the same column (numeric keeps the scale it was written with; a jsonb
// number too) — and at a numeric integer beyond int64. The run stops there
// on every restart.
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
		{"numeric beyond int64", json.Number("100000000000000000000"), json.RawMessage(`{"lots": 100000000000000000000}`), -1},
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
