package main

import (
	"testing"
)

// One when: shared (a YAML anchor) by a table's update and delete rules,
// reading the row as `(new ?? old)`: new for updates, and for deletes,
// where new is nil, the deleted row. The 2026-12-04 builds refused the
// delete rule at load ("reads new, but the rule fires on deletes only"),
// so walhook run no longer started on a config that worked; a read of
// new on the left of ?? is what deletes need, as is one behind op !=
// "delete" &&. The rules load, and each fires for its deleted order.
func TestDeleteRuleReadsNewOrOld(t *testing.T) {
	t.Parallel()
	db, rc, p := oneTableRun(t, `CREATE TABLE orders (id bigint PRIMARY KEY, region text);
		ALTER TABLE orders REPLICA IDENTITY FULL;`, `  - event: order.updated
    table: public.orders
    operations: [update]
    when: &eu '(new ?? old).region == "eu"'
    data: [id]
  - event: order.deleted
    table: public.orders
    operations: [delete]
    when: *eu
    data: [id]
  - event: order.deleted_us
    table: public.orders
    operations: [delete]
    when: '(new?.region ?? old.region) == "us"'
    data: [id]
  - event: order.deleted_fr
    table: public.orders
    operations: [delete]
    when: '(op == "delete" && old.region == "fr") || (op != "delete" && new.region == "fr")'
    data: [id]
`)
	db.exec(t, `INSERT INTO orders VALUES (1, 'eu'), (2, 'us'), (3, 'fr'); DELETE FROM orders`)
	waitDelivered(t, p, rc, 3, "order.deleted for the eu order, order.deleted_us for the us one, order.deleted_fr for the fr one")
	if c := rc.Counts(); c["order.deleted"] != 1 || c["order.deleted_us"] != 1 || c["order.deleted_fr"] != 1 {
		t.Fatalf("deliveries by event: %v, want one order.deleted, order.deleted_us and order.deleted_fr", c)
	}
}
