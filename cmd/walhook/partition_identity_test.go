package main

import (
	"context"
	"slices"
	"testing"
)

// A list-partitioned table with a partition that is partitioned itself,
// so leaves sit at two depths.
const identBidSchema = `CREATE TABLE bid (id bigint NOT NULL, lot int NOT NULL, amount int NOT NULL DEFAULT 0, PRIMARY KEY (id, lot)) PARTITION BY LIST (lot);
	CREATE TABLE bid_a PARTITION OF bid FOR VALUES IN (1);
	CREATE TABLE bid_b PARTITION OF bid FOR VALUES IN (2) PARTITION BY RANGE (id);
	CREATE TABLE bid_b_lo PARTITION OF bid_b FOR VALUES FROM (MINVALUE) TO (MAXVALUE);`

// What PostgreSQL 15 does with REPLICA IDENTITY on a partitioned table,
// which check and setup --replica-identity rely on: ALTER TABLE on the
// partitioned table sets its own pg_class.relreplident only, neither its
// partitions' nor those of partitions created or attached later; and
// pgoutput, also when it publishes via the root, takes an UPDATE's old
// row from the replica identity of the leaf partition the row is in.
func TestPartitionedReplicaIdentityIsPerLeaf(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newRunDB(t, identBidSchema+`
		ALTER TABLE bid REPLICA IDENTITY FULL;
		CREATE TABLE bid_c PARTITION OF bid FOR VALUES IN (3);
		CREATE TABLE bid_d (LIKE bid INCLUDING ALL);
		ALTER TABLE bid ATTACH PARTITION bid_d FOR VALUES IN (4);
		CREATE PUBLICATION ident FOR TABLE bid WITH (publish_via_partition_root = true);`)
	idents := map[string]string{}
	rows, err := db.pool.Query(ctx, `SELECT relname::text, relreplident::text FROM pg_class WHERE relname LIKE 'bid%' AND relkind IN ('r', 'p')`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name, ident string
		if err := rows.Scan(&name, &ident); err != nil {
			t.Fatal(err)
		}
		idents[name] = ident
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	want := map[string]string{"bid": "f", "bid_a": "d", "bid_b": "d", "bid_b_lo": "d", "bid_c": "d", "bid_d": "d"}
	for name, w := range want {
		if idents[name] != w {
			t.Errorf("%s: relreplident %q, want %q (ALTER TABLE on the partitioned table only)", name, idents[name], w)
		}
	}

	// pgoutput's Update message: 'U', the relation's OID (4 bytes), then
	// 'O' before an old row sent whole (FULL), 'K' before an old key, or
	// 'N' straight away when no old row is sent.
	slot := db.slot + "_ident"
	db.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	t.Cleanup(func() { db.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot) })
	db.exec(t, `INSERT INTO bid (id, lot) VALUES (1, 1), (2, 2)`)
	db.exec(t, `UPDATE bid SET amount = 10`)
	db.exec(t, `ALTER TABLE bid_a REPLICA IDENTITY FULL`)
	db.exec(t, `UPDATE bid SET amount = 20`)
	var got []string
	rows, err = db.pool.Query(ctx, `
		SELECT chr(get_byte(data, 5)), (get_byte(data, 1)::int8 << 24 | get_byte(data, 2) << 16 | get_byte(data, 3) << 8 | get_byte(data, 4)) = 'bid'::regclass::oid::int8
		FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', 'ident')
		WHERE get_byte(data, 0) = ascii('U')`, slot)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var kind string
		var asRoot bool
		if err := rows.Scan(&kind, &asRoot); err != nil {
			t.Fatal(err)
		}
		if !asRoot {
			t.Error("an update arrived under a partition's OID, not bid's")
		}
		got = append(got, kind)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	// Updates in order: bid_a, bid_b_lo (both DEFAULT: no old row), then
	// bid_a FULL, bid_b_lo still DEFAULT.
	if want := []string{"N", "N", "O", "N"}; !slices.Equal(got, want) {
		t.Errorf("old-row markers of the updates %q, want %q", got, want)
	}
}
