package cdc

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

const bidSchema = `CREATE TABLE bid (id int8, lot int8 NOT NULL, amount int8, PRIMARY KEY (id, lot)) PARTITION BY HASH (lot);
	CREATE TABLE bid_0 PARTITION OF bid FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE bid_1 PARTITION OF bid FOR VALUES WITH (MODULUS 2, REMAINDER 1);`

// A partitioned rule table: setup publishes it via its root, so
// pg_publication_tables lists the root (a second setup finds nothing to
// change) and every partition's changes arrive under the root's name, the
// one rules name.
func TestSetupPartitionedViaRoot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, bidSchema)
	o := SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: []string{"public.bid"}}
	if _, err := Setup(ctx, dsn, o); err != nil {
		t.Fatal(err)
	}
	again, err := Setup(ctx, dsn, o)
	if err != nil || again[0] != "publication walhook already publishes public.bid" {
		t.Fatalf("second setup: %q, %v", again, err)
	}
	var viaRoot bool
	var tables string
	queryRow(t, dsn, `SELECT pubviaroot FROM pg_publication WHERE pubname = 'walhook'`, &viaRoot)
	queryRow(t, dsn, `SELECT string_agg(schemaname||'.'||tablename, ',') FROM pg_publication_tables WHERE pubname = 'walhook'`, &tables)
	if !viaRoot || tables != "public.bid" {
		t.Fatalf("publish_via_partition_root %v, published %q; want true, public.bid", viaRoot, tables)
	}

	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `INSERT INTO bid VALUES (1, 1, 10), (2, 2, 20)`)
	tx := b.nextTx(t)
	if len(tx.Changes) != 2 {
		t.Fatalf("%d changes, want 2", len(tx.Changes))
	}
	lots := map[any]bool{}
	for _, c := range tx.Changes {
		if c.Rel.Table() != "public.bid" {
			t.Fatalf("change arrived as %s, want public.bid", c.Rel.Table())
		}
		lots[col(t, c, c.New, "lot")] = true
	}
	if !lots[json.Number("1")] || !lots[json.Number("2")] {
		t.Fatalf("lots %v: want one row in each partition", lots)
	}
}

// A publication walhook may alter that was made without
// publish_via_partition_root (an older walhook, or by hand): setup turns it
// on, after which the publication lists the root instead of the partitions.
func TestSetupTurnsOnViaRoot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, bidSchema+`CREATE PUBLICATION walhook FOR TABLE bid`)
	did, err := Setup(ctx, dsn, SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: []string{"bid"}})
	t.Logf("%q", did)
	if err != nil || len(did) != 3 || did[0] != "set publish_via_partition_root = true on publication walhook" ||
		did[1] != "publication walhook already publishes public.bid" {
		t.Fatalf("setup: %q, %v", did, err)
	}
}

// A rule on a partition and one on its partitioned table cannot both
// work (the partition's changes arrive under one name only): setup says
// so before touching the publication.
func TestSetupRefusesPartitionOfRuleTable(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, bidSchema)
	_, err := Setup(context.Background(), dsn, SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: []string{"bid", "bid_1"}})
	if err == nil || !strings.Contains(err.Error(), "public.bid_1 is a partition of public.bid, which the rules map too") {
		t.Fatalf("setup: %v", err)
	}
	var n int
	queryRow(t, dsn, `SELECT count(*) FROM pg_publication`, &n)
	if n != 0 {
		t.Fatal("refused setup created the publication")
	}
}

// A row filter or a column list on a rule table of a publication walhook
// may alter: setup publishes the table whole again.
func TestSetupResetsRowFilterAndColumnList(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, itemSchema+`CREATE TABLE other (id int PRIMARY KEY, a text, b text);
		CREATE PUBLICATION walhook FOR TABLE item WHERE (status <> 'draft'), other (id, a)`)
	o := SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: []string{"item", "other"}}
	did, err := Setup(ctx, dsn, o)
	t.Logf("%q", did)
	if err != nil || !strings.Contains(did[1], "publication walhook now publishes public.item, public.other whole (it had a row filter or column list)") {
		t.Fatalf("setup: %q, %v", did, err)
	}
	var n int
	queryRow(t, dsn, `SELECT count(*) FROM pg_publication_rel WHERE prqual IS NOT NULL OR prattrs IS NOT NULL`, &n)
	if n != 0 {
		t.Fatalf("%d tables still filtered after setup", n)
	}
	again, err := Setup(ctx, dsn, o)
	if err != nil || !strings.HasPrefix(again[0], "publication walhook already publishes public.item, public.other") {
		t.Fatalf("second setup: %q, %v", again, err)
	}
}

// REPLICA IDENTITY FULL asked for a partitioned table is set on it and on
// each leaf partition, which PostgreSQL does not do by itself and whose
// identity decides the old row pgoutput sends; a second setup finds the
// whole tree FULL.
func TestSetupReplicaIdentityFullPartitioned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, bidSchema)
	o := SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: []string{"public.bid"}, ReplicaIdentityFull: []string{"public.bid"}}
	did, err := Setup(ctx, dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(did, "\n")
	for _, want := range []string{"set REPLICA IDENTITY FULL on public.bid\n",
		"set REPLICA IDENTITY FULL on public.bid_0, a partition of public.bid\n",
		"set REPLICA IDENTITY FULL on public.bid_1, a partition of public.bid\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("setup did not report %q:\n%s", strings.TrimSpace(want), got)
		}
	}
	var notFull int
	queryRow(t, dsn, `SELECT count(*) FROM pg_class WHERE relname IN ('bid', 'bid_0', 'bid_1') AND relreplident <> 'f'`, &notFull)
	if notFull != 0 {
		t.Fatalf("%d of bid's tables without FULL after setup", notFull)
	}
	again, err := Setup(ctx, dsn, o)
	if err != nil || !strings.Contains(strings.Join(again, "\n"), "table public.bid and its 2 partitions already have REPLICA IDENTITY FULL") {
		t.Fatalf("second setup: %q, %v", again, err)
	}
}
