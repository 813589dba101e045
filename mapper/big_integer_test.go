package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// bigint and whole numeric values compare exactly in `when:`, also past
// 2^53 where float64 can no longer tell neighbours apart: a snowflake id
// that changed by one is a change (as floats, 9007199254740993 and
// 9007199254740992 are the same number).
func TestMapWhenComparesBigIntegersExactly(t *testing.T) {
	t.Parallel()
	rel := testRel(911, "public.tickets", 'f', "id", "owner_id")
	m := mustCompile(t, Options{},
		Rule{Event: "ticket.reassigned", Table: "tickets", Ops: []cdc.Op{cdc.OpUpdate}, When: `old.owner_id != new.owner_id`, Data: []DataField{{Key: "id", Column: "id"}}},
		Rule{Event: "ticket.owner_up", Table: "tickets", Ops: []cdc.Op{cdc.OpUpdate}, When: `new.owner_id > old.owner_id`, Data: []DataField{{Key: "id", Column: "id"}}},
	)
	for _, c := range []struct {
		name     string
		old, new any
	}{
		{"bigint", int64(9007199254740992), int64(9007199254740993)},
		{"numeric", json.Number("9007199254740992"), json.Number("9007199254740993")},
		{"numeric with a scale", json.Number("9007199254740992.00"), json.Number("9007199254740993.00")},
		{"near the top of int64", int64(9223372036854775806), int64(9223372036854775807)},
	} {
		evs, err := m.Map(txOf(change(cdc.OpUpdate, rel,
			map[string]any{"id": int64(1), "owner_id": c.old}, map[string]any{"id": int64(1), "owner_id": c.new})))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(evs) != 2 {
			t.Errorf("%s: %d events (%s), want ticket.reassigned and ticket.owner_up", c.name, len(evs), summary(evs))
		}
	}
}
