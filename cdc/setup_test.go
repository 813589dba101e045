package cdc

import (
	"context"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

func TestSetupIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, itemSchema+`CREATE TABLE other (id int PRIMARY KEY); CREATE SCHEMA walhook; CREATE TABLE walhook.cursor (id int)`)
	o := SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: []string{"item"}, ReplicaIdentityFull: []string{"public.item"}}
	first, err := Setup(ctx, dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Setup(ctx, dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first: %q\nsecond: %q", first, second)
	if !strings.Contains(first[0], "created publication") || !strings.Contains(first[2], "created replication slot") ||
		!strings.Contains(second[0], "already publishes public.item") || !strings.Contains(second[1], "already has REPLICA IDENTITY FULL") ||
		!strings.Contains(second[2], "already exists") {
		t.Fatalf("unexpected report")
	}
	var ident, plugin string
	var temporary bool
	queryRow(t, dsn, `SELECT relreplident::text FROM pg_class WHERE oid = 'public.item'::regclass`, &ident)
	queryRow(t, dsn, `SELECT plugin, temporary FROM pg_replication_slots WHERE slot_name = '`+slotFor(dsn)+`'`, &plugin, &temporary)
	if ident != "f" || plugin != "pgoutput" || temporary {
		t.Fatalf("identity %q plugin %q temporary %v", ident, plugin, temporary)
	}

	o.Tables = []string{"public.other", "public.item"}
	third, err := Setup(ctx, dsn, o)
	if err != nil || !strings.Contains(third[0], "changed publication walhook from public.item to public.item, public.other") {
		t.Fatalf("third: %q, %v", third, err)
	}
	var tables string
	queryRow(t, dsn, `SELECT string_agg(schemaname||'.'||tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'walhook'`, &tables)
	if tables != "public.item,public.other" {
		t.Fatalf("published %q (the store schema must never be published)", tables)
	}

	if _, err := Setup(ctx, dsn, SetupOptions{Slot: "Bad-Name", Publication: "p"}); err == nil {
		t.Fatal("bad slot name accepted")
	}
	if _, err := Setup(ctx, dsn, SetupOptions{Slot: slotFor(dsn), Publication: "p2", Tables: []string{"a.b.c"}}); err == nil {
		t.Fatal("bad table name accepted")
	}
	exec(t, dsn, `SELECT pg_create_logical_replication_slot('`+slotFor(dsn)+`_td', 'test_decoding')`)
	if _, err := Setup(ctx, dsn, SetupOptions{Slot: slotFor(dsn) + "_td", Publication: "walhook"}); err == nil || !strings.Contains(err.Error(), "needs pgoutput") {
		t.Fatalf("slot with another plugin: %v", err)
	}
}

func TestTeardown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	slot := slotFor(dsn)
	b := startStream(t, dsn, 0, nil)
	waitFor(t, "the stream to hold the slot", func() bool {
		st, err := b.stream.Status(ctx)
		return err == nil && st.Active && st.State == StateStreaming
	})
	_, err := Teardown(ctx, dsn, slot, "walhook", false)
	wantErr(t, err, ErrSlotActive)
	var n int
	queryRow(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = '`+slot+`'`, &n)
	if n != 1 {
		t.Fatal("refused teardown dropped the slot anyway")
	}
	did, err := Teardown(ctx, dsn, slot, "walhook", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%q", did)
	queryRow(t, dsn, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '`+slot+`') + (SELECT count(*) FROM pg_publication)`, &n)
	if n != 0 || !strings.Contains(did[0], "terminating") || did[1] != "dropped publication walhook" {
		t.Fatalf("after forced teardown: %d objects left, report %q", n, did)
	}
	// The running stream now finds its slot gone: a loud, specific error.
	wantErr(t, b.runErr(t), ErrSlotMissing)
	again, err := Teardown(ctx, dsn, slot, "walhook", false)
	if err != nil || !strings.Contains(again[0], "does not exist") {
		t.Fatalf("second teardown: %q %v", again, err)
	}
}
