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

// Two rules of one event that route it apart — auction_id from the old
// row and from the new (a lot moved between auctions, told to both), or
// sns domains from two columns — produce two events for two sets of
// endpoints, not one twice: they load. Rules that name the same source
// in two spellings (auction_id: auction_id and auction_id: new.auction_id
// on updates; none and old.auction_id on deletes), and old and new of a
// column neither rule fires on changes of alone, are still refused.
func TestSameEventRoutedApart(t *testing.T) {
	t.Parallel()
	moved := func(auction string) Rule {
		return Rule{Event: "lot.moved", Table: "lots", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"auction_id"}, AuctionID: auction}
	}
	if _, err := Compile([]Rule{moved("old.auction_id"), moved("new.auction_id")}, Options{}); err != nil {
		t.Errorf("auction_id from old and new: %v", err)
	}
	sns := func(domain string) Rule {
		return Rule{Event: "lot.moved", Table: "lots", Ops: []cdc.Op{cdc.OpUpdate}, Envelope: EnvelopeSNS, Domain: domain}
	}
	if _, err := Compile([]Rule{sns("seller_domain"), sns("buyer_domain")}, Options{}); err != nil {
		t.Errorf("sns domains from two columns: %v", err)
	}
	// Old and new of a column an update leaves unchanged are one value.
	unchanged := func(auction string) Rule {
		return Rule{Event: "lot.moved", Table: "lots", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"title"}, AuctionID: auction}
	}
	for _, pair := range [][2]Rule{
		{unchanged("old.auction_id"), unchanged("new.auction_id")},
		{moved("auction_id"), moved("new.auction_id")},
		{moved(""), moved("auction_id")},
		{{Event: "lot.removed", Table: "lots", Ops: []cdc.Op{cdc.OpDelete}},
			{Event: "lot.removed", Table: "lots", Ops: []cdc.Op{cdc.OpDelete}, AuctionID: "old.auction_id"}},
	} {
		if _, err := Compile([]Rule{pair[0], pair[1]}, Options{}); !errors.Is(err, ErrConflict) {
			t.Errorf("auction_id %q and %q: err = %v, want the second rule refused", pair[0].AuctionID, pair[1].AuctionID, err)
		}
	}
}
