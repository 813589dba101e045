package mapper

import (
	"errors"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// A delete rule whose when: reads new (`new.status == "cancelled"`, the
// integrator meaning the row being deleted) was accepted, as was data:
// [new.x] not: new is nil for deletes, so the expression was false (or
// unknown) on every row and the rule never fired, without a word from
// check or mapping test beyond "when is false". It is refused at load,
// as old on an insert-only rule is; a rule that also fires on updates
// may read new.
func TestWhenReadsNewOnDeleteOnlyRule(t *testing.T) {
	t.Parallel()
	for _, when := range []string{`new.status == "cancelled"`, `old.id > 0 && new["status"] == "x"`} {
		_, err := Compile([]Rule{{Event: "order.removed", Table: "orders", Ops: []cdc.Op{cdc.OpDelete},
			When: when, Where: "w.yaml:3:5: events[0]"}}, Options{})
		if !errors.Is(err, ErrExpression) || !strings.Contains(err.Error(),
			"w.yaml:3:5: events[0].when: event order.removed: reads new, but the rule fires on deletes only, where new is nil; read the deleted row as old (old.x)") {
			t.Errorf("when %s: err = %v, want it refused", when, err)
		}
	}
	for _, ok := range []Rule{
		{Event: "order.removed", Table: "orders", Ops: []cdc.Op{cdc.OpDelete}, When: `old.status == "cancelled"`},
		{Event: "order.gone", Table: "orders", Ops: []cdc.Op{cdc.OpUpdate, cdc.OpDelete}, When: `op == "delete" || new.status == "x"`},
		{Event: "order.gone2", Table: "orders", Ops: []cdc.Op{cdc.OpDelete}, When: `new == nil`},
	} {
		if _, err := Compile([]Rule{ok}, Options{}); err != nil {
			t.Errorf("when %s: %v", ok.When, err)
		}
	}
}

// A delete rule may read new on the left of ?? — `(new ?? old).region`,
// `new?.region ?? old.region`, the when: a table's update and delete
// rules share — where a nil new falls back to the deleted row, or behind
// a test that is false for deletes (op != "delete" && new.region …): it
// loads.
// Other reads of new on a delete-only rule (also new?.x alone, nil on
// every delete) are still refused.
func TestWhenReadsNewOrOldOnDeleteOnlyRule(t *testing.T) {
	t.Parallel()
	for _, when := range []string{`(new ?? old).region == "eu"`, `(new?.region ?? old.region) == "eu"`, `(new.region ?? old.region) in ["eu"]`,
		`(op == "delete" && old.region == "eu") || (op != "delete" && new.region == "eu")`,
		`op == "delete" ? old.region == "eu" : new.region == "eu"`,
		`new != nil ? new.region == "eu" : old.region == "eu"`,
		`new == nil || new.region == "eu"`,
		`(op == "update" and new.region == "eu") or old.region == "eu"`} {
		if _, err := Compile([]Rule{{Event: "order.removed", Table: "orders", Ops: []cdc.Op{cdc.OpDelete}, When: when}}, Options{}); err != nil {
			t.Errorf("when %s: %v", when, err)
		}
	}
	for _, when := range []string{`new?.region == "eu"`, `(new ?? old).region == "eu" && new.x == 1`,
		`op == "delete" && new.region == "eu"`, `op != "delete" ? old.region == "eu" : new.region == "eu"`, `new != nil || new.region == "eu"`} {
		_, err := Compile([]Rule{{Event: "order.removed", Table: "orders", Ops: []cdc.Op{cdc.OpDelete}, When: when}}, Options{})
		if !errors.Is(err, ErrExpression) || !strings.Contains(err.Error(), "reads new, but the rule fires on deletes only") {
			t.Errorf("when %s: err = %v, want it refused", when, err)
		}
	}
}

// The mirror for inserts: an insert-only rule reading old behind ?? or a
// test false for inserts (a when: shared with the table's update rules)
// loads; one reading old where an insert would is refused, as it was.
func TestWhenReadsOldOrNewOnInsertOnlyRule(t *testing.T) {
	t.Parallel()
	for _, when := range []string{`(old ?? new).region == "eu"`, `(old?.region ?? new.region) == "eu"`,
		`(op == "insert" && new.region == "eu") || (op != "insert" && old.region == "eu")`,
		`op == "insert" ? new.region == "eu" : old.region == "eu"`,
		`old == nil || old.region == "eu"`,
		`(op == "update" and old.region == "eu") or new.region == "eu"`} {
		if _, err := Compile([]Rule{{Event: "order.placed", Table: "orders", Ops: []cdc.Op{cdc.OpInsert}, When: when}}, Options{}); err != nil {
			t.Errorf("when %s: %v", when, err)
		}
	}
	for _, when := range []string{`old.region == "eu"`, `old?.region == "eu"`, `(old ?? new).region == "eu" && old.x == 1`,
		`op == "insert" && old.region == "eu"`, `old != nil || old.region == "eu"`} {
		_, err := Compile([]Rule{{Event: "order.placed", Table: "orders", Ops: []cdc.Op{cdc.OpInsert}, When: when}}, Options{})
		if !errors.Is(err, ErrExpression) || !strings.Contains(err.Error(), "reads old, but the rule fires on inserts only") {
			t.Errorf("when %s: err = %v, want it refused", when, err)
		}
	}
}
