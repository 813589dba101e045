package main

import (
	"slices"
	"testing"
)

// A lot moved from one auction to another, told to the subscribers of
// both: two rules of one event type on the same update, without when:,
// one taking auction_id from the old row and one from the new. The
// 2026-12-04 builds refused them at load as "produces lot.moved twice",
// so walhook run no longer started on a config that worked: the two
// events are not one event twice, each goes to another auction's
// endpoints. They load, and both are delivered.
func TestSameEventToTwoAuctions(t *testing.T) {
	t.Parallel()
	db, rc, p := oneTableRun(t, `CREATE TABLE lots (id bigint PRIMARY KEY, auction_id text, title text);
		ALTER TABLE lots REPLICA IDENTITY FULL;`, `  - event: lot.moved
    table: public.lots
    operations: [update]
    changed: [auction_id]
    auction_id: old.auction_id
    data: [id, from: old.auction_id, to: new.auction_id]
  - event: lot.moved
    table: public.lots
    operations: [update]
    changed: [auction_id]
    auction_id: new.auction_id
    data: [id, from: old.auction_id, to: new.auction_id]
`)
	db.exec(t, `INSERT INTO lots VALUES (1, 'a1', 'Lot 1'); UPDATE lots SET auction_id = 'a2' WHERE id = 1`)
	waitDelivered(t, p, rc, 2, "lot.moved for both auctions")
	var auctions []string
	for _, b := range rc.Bodies() {
		auctions = append(auctions, runBody(t, b)["auction_id"].(string))
	}
	slices.Sort(auctions)
	if !slices.Equal(auctions, []string{"a1", "a2"}) {
		t.Fatalf("lot.moved went to auctions %v, want a1 and a2", auctions)
	}
}
