package mapper

import (
	"errors"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// Two rules for one event type on one table, with an operation in common
// and neither with a when: (say changed: [status] and changed: [assignee]
// for problem.updated): one change that matches both (an update of both
// columns) produced the event twice, under two ids, so receivers got one
// business event twice. Refused at load with the fix; the seed's two
// member.removed rules (update and delete) and rules told apart by when:
// are fine.
func TestSameEventTwiceOnOneChange(t *testing.T) {
	t.Parallel()
	_, err := Compile([]Rule{
		{Event: "problem.updated", Table: "problems", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}, Where: "w.yaml:3:5: events[0]"},
		{Event: "problem.updated", Table: "public.problems", Ops: []cdc.Op{cdc.OpInsert, cdc.OpUpdate}, Changed: []string{"assignee"}, Where: "w.yaml:8:5: events[1]"},
	}, Options{})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(),
		"w.yaml:8:5: events[1]: event problem.updated: fires on update of public.problems like the rule at w.yaml:3:5: events[0], and neither has a when:, "+
			"so a change both match produces problem.updated twice; list the columns in one rule's changed:, or tell the rules apart with when:") {
		t.Fatalf("err = %v, want the second rule refused", err)
	}
	for _, ok := range [][]Rule{
		{{Event: "member.removed", Table: "members", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"removed_at"}},
			{Event: "member.removed", Table: "members", Ops: []cdc.Op{cdc.OpDelete}}},
		{{Event: "problem.updated", Table: "problems", Ops: []cdc.Op{cdc.OpUpdate}, When: `new.status == "a"`},
			{Event: "problem.updated", Table: "problems", Ops: []cdc.Op{cdc.OpUpdate}, When: `new.status == "b"`}},
		{{Event: "row.created", Table: "a", Ops: []cdc.Op{cdc.OpInsert}, Data: []DataField{{Key: "id", Column: "id"}}},
			{Event: "row.created", Table: "b", Ops: []cdc.Op{cdc.OpInsert}, Data: []DataField{{Key: "id", Column: "id"}}}},
	} {
		if _, err := Compile(ok, Options{}); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
}
