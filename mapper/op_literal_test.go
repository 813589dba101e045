package mapper

import (
	"errors"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// op is "insert", "update" or "delete"; an integrator writing op ==
// "UPDATE" (or "updated", "created") got a rule that loaded, passed check
// and never matched (mapping test: "when is false"). A comparison of op
// with any other string is refused at load.
func TestWhenComparesOpWithAnUnknownValue(t *testing.T) {
	t.Parallel()
	ops := []cdc.Op{cdc.OpInsert, cdc.OpUpdate}
	for when, bad := range map[string]string{
		`op == "UPDATE"`:                     "UPDATE",
		`new.id > 0 && "created" != op`:      "created",
		`op in ["insert", "updated"]`:        "updated",
		`!(op in ["update"]) && op == "ins"`: "ins",
	} {
		_, err := Compile([]Rule{{Event: "order.changed", Table: "orders", Ops: ops, When: when, Where: "w.yaml:3:5: events[0]"}}, Options{})
		want := `w.yaml:3:5: events[0].when: event order.changed: compares op with "` + bad + `", which op never is: it is "insert", "update" or "delete" (lowercase)`
		if !errors.Is(err, ErrExpression) || !strings.Contains(err.Error(), want) {
			t.Errorf("when %s: err = %v, want %s", when, err, want)
		}
	}
	for _, when := range []string{`op == "update" && new.id > 0`, `op in ["insert", "update"]`, `op != "delete"`, `new.op == "UPDATE"`} {
		if _, err := Compile([]Rule{{Event: "order.changed", Table: "orders", Ops: ops, When: when}}, Options{}); err != nil {
			t.Errorf("when %s: %v", when, err)
		}
	}
}
