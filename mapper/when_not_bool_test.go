package mapper

import (
	"errors"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// docs/mapping.md: the expression "must be boolean", and one that fails on
// values that are all present stops the run. A when: over a column that
// is not boolean (`new.status` on a text column) cannot be refused at
// load, where columns have no type; it was read as false on every row, so
// the rule never fired and nothing said why. It stops like `!new.status`
// does; a NULL there is unknown, as elsewhere.
func TestWhenThatIsNotBooleanStops(t *testing.T) {
	t.Parallel()
	msgs := testRel(3, "public.messages", 'f', "id", "status", "flag")
	m := mustCompile(t, Options{}, Rule{Event: "message.flagged", Table: "messages", Ops: []cdc.Op{cdc.OpInsert},
		When: `new.flag`, Data: []DataField{{Key: "id", Column: "id"}}})
	if evs, err := m.Map(txOf(change(cdc.OpInsert, msgs, nil, map[string]any{"id": "m1", "flag": true}))); err != nil || len(evs) != 1 {
		t.Fatalf("a boolean column that is true: %v, %v", evs, err)
	}
	if evs, err := m.Map(txOf(change(cdc.OpInsert, msgs, nil, map[string]any{"id": "m1", "flag": nil}))); err != nil || len(evs) != 0 {
		t.Fatalf("a NULL: %v, %v; want no match", evs, err)
	}
	_, err := m.Map(txOf(change(cdc.OpInsert, msgs, nil, map[string]any{"id": "m1", "flag": "yes"})))
	var re *RuleError
	if !errors.As(err, &re) || !errors.Is(err, ErrEvaluation) || !strings.Contains(err.Error(), "new.flag on public.messages: expected bool, but got string") {
		t.Fatalf("a text value: err = %v, want the evaluation error naming the rule", err)
	}
}
