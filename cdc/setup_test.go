package cdc

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

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

func TestTimelineSwitches(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		want []LSN
		err  bool
	}{
		{"1\t0/3000000\tno recovery target specified\n", []LSN{0x3000000}, false},
		{"1\t0/3000000\tno recovery target specified\n\n2\t1/A0000028\tat restore point \"x\"\n", []LSN{0x3000000, 0x1A0000028}, false},
		{"# comment\n1\t0/5000000\treason\n", []LSN{0x5000000}, false},
		{"", nil, true},
		{"1\n", nil, true},
		{"1\tnot-an-lsn\treason\n", nil, true},
	} {
		got, err := timelineSwitches([]byte(c.in))
		if (err != nil) != c.err || !slices.Equal(got, c.want) {
			t.Errorf("timelineSwitches(%q) = %v, %v; want %v, error %v", c.in, got, err, c.want, c.err)
		}
	}
}

// A cluster that was never promoted is on timeline 1, which has no start.
func TestTimelineSwitchesOfAPrimary(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	sw, tl, err := TimelineSwitches(context.Background(), dsn)
	if err != nil || len(sw) != 0 || tl != 1 {
		t.Fatalf("TimelineSwitches = %v, timeline %d, %v; want none on timeline 1", sw, tl, err)
	}
}

// A promoted standby is on timeline 2, which began where it stopped
// replaying the primary: past everything it replayed, at or before its
// first own WAL.
func TestTimelineSwitchesOfAPromotedStandby(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	primary := pgtest.StartT(t, pgtest.Options{})
	standby, err := primary.StartStandby()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { standby.Remove() })
	if err := primary.Exec(ctx, "postgres", `CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)`); err != nil {
		t.Fatal(err)
	}
	sconn, err := pgx.Connect(ctx, standby.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close(ctx)
	var replayed string
	waitFor(t, "the standby to replay the primary's writes", func() bool {
		var caughtUp bool
		err := sconn.QueryRow(ctx, `SELECT pg_last_wal_replay_lsn()::text, EXISTS (SELECT FROM t WHERE id = 1000)`).Scan(&replayed, &caughtUp)
		return err == nil && caughtUp
	})
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	sw, tl, err := TimelineSwitches(ctx, standby.DSN("postgres"))
	if err != nil || len(sw) != 1 || tl != 2 {
		t.Fatalf("TimelineSwitches = %v, timeline %d, %v; want one switch, timeline 2", sw, tl, err)
	}
	start := sw[0]
	var nowLSN string
	if err := sconn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&nowLSN); err != nil {
		t.Fatal(err)
	}
	r, _ := pglogrepl.ParseLSN(replayed)
	n, _ := pglogrepl.ParseLSN(nowLSN)
	if start < r || start > n {
		t.Fatalf("timeline 2 starts at %s, want between the last replayed %s and the WAL end %s", start, r, n)
	}
}
