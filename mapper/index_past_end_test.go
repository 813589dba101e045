package mapper

import (
	"encoding/json"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// An element an array lacks is, in SQL, NULL (tags[1] of '{}', and
// details->'photos'->0 of '{"photos": []}'), and docs/mapping.md makes a
// NULL or a missing json key "unknown": the rule does not match that row
// and the run goes on. An index past the end failed expr with "index out
// of range", which stopped the run at valid data on every restart.
func TestMapWhenIndexPastTheEndOfAnArrayIsUnknown(t *testing.T) {
	t.Parallel()
	docs := testRel(911, "public.docs", 'f', "id", "tags", "details")
	m := mustCompile(t, Options{},
		Rule{Event: "doc.vip", Table: "docs", Ops: []cdc.Op{cdc.OpInsert}, When: `new.tags[0] == "vip"`, Data: []DataField{{Key: "id", Column: "id"}}},
		Rule{Event: "doc.wide_photo", Table: "docs", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.photos[0].width > 100`, Data: []DataField{{Key: "id", Column: "id"}}},
	)
	evs, err := m.Map(txOf(change(cdc.OpInsert, docs, nil, map[string]any{
		"id": int64(1), "tags": []any{}, "details": json.RawMessage(`{"photos": []}`)})))
	if err != nil {
		t.Fatalf("an empty array stops the run: %v", err)
	}
	if len(evs) != 0 {
		t.Errorf("events for empty arrays: %s", summary(evs))
	}
	if got := m.Stats().WhenUnknown; got != 2 {
		t.Errorf("WhenUnknown = %d, want 2", got)
	}
	evs, err = m.Map(txOf(change(cdc.OpInsert, docs, nil, map[string]any{
		"id": int64(2), "tags": []any{"vip"}, "details": json.RawMessage(`{"photos": [{"width": 200}]}`)})))
	if err != nil || len(evs) != 2 {
		t.Errorf("full arrays: %d events, err %v", len(evs), err)
	}
}
