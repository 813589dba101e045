package cdc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jackc/pglogrepl"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/syncbuf"
)

func TestMissingObjects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	exec(t, dsn, itemSchema)

	b := startStream(t, dsn, 0, nil)
	wantErr(t, b.runErr(t), ErrSlotMissing)
	st, _ := b.stream.Status(ctx)
	if st.State != StateError || st.LastError == "" {
		t.Fatalf("status after slot missing: %+v", st)
	}

	exec(t, dsn, `SELECT pg_create_logical_replication_slot('`+slotFor(dsn)+`', 'pgoutput')`)
	b = startStream(t, dsn, 0, nil)
	wantErr(t, b.runErr(t), ErrPublicationMissing)
}

func TestCursorBehindSlot(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	var before, after string
	queryRow(t, dsn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '`+slotFor(dsn)+`'`, &before)
	exec(t, dsn, `INSERT INTO item VALUES (1, 'x')`)
	queryRow(t, dsn, `SELECT end_lsn::text FROM pg_replication_slot_advance('`+slotFor(dsn)+`', pg_current_wal_lsn())`, &after)
	lsn, _ := pglogrepl.ParseLSN(before)
	b := startStream(t, dsn, lsn, nil)
	err := b.runErr(t)
	wantErr(t, err, ErrCursorBehindSlot)
	t.Log(err)
}

// TestReplayUnconfirmed: a consumer that made a transaction durable but
// stopped before Confirm gets it again, with the same ids, when it resumes
// from the slot; resuming from its own cursor (the EndLSN) skips it.
func TestReplayUnconfirmed(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	exec(t, dsn, `INSERT INTO item VALUES (1, 'a'), (2, 'b')`)
	exec(t, dsn, `INSERT INTO item VALUES (3, 'c')`)

	b := startStream(t, dsn, 0, nil)
	first := b.next(t) // made durable, never confirmed
	b.stop(t)

	b = startStream(t, dsn, 0, nil)
	again := b.next(t)
	if again.Xid != first.Xid || again.CommitLSN != first.CommitLSN || again.EndLSN != first.EndLSN || len(again.Changes) != 2 ||
		again.Changes[1].Position != first.Changes[1].Position || again.Changes[1].LSN != first.Changes[1].LSN {
		t.Fatalf("replay differs: %+v vs %+v", again, first)
	}
	b.stop(t)

	b = startStream(t, dsn, first.EndLSN, nil)
	if next := b.nextTx(t); next.Xid == first.Xid || col(t, next.Changes[0], next.Changes[0].New, "id") != json.Number("3") {
		t.Fatalf("resuming from the cursor replayed: %+v", next)
	}
}

// TestSecondConsumerWaits: a second stream on a held slot waits (and says
// so) and takes over when the first lets go; the slot is never dropped.
func TestSecondConsumerWaits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	a := startStream(t, dsn, 0, nil)
	waitFor(t, "a to stream", func() bool { st, _ := a.stream.Status(ctx); return st.State == StateStreaming })
	b := startStream(t, dsn, 0, nil)
	waitFor(t, "b to wait for the slot", func() bool {
		st, _ := b.stream.Status(ctx)
		return st.State == StateWaitingForSlot && st.Active
	})
	a.stop(t)
	exec(t, dsn, `INSERT INTO item VALUES (1, 'x')`)
	if tx := b.nextTx(t); len(tx.Changes) != 1 {
		t.Fatalf("b got %+v", tx)
	}
	st, err := b.stream.Status(ctx)
	if err != nil || st.State != StateStreaming || st.Reconnects == 0 {
		t.Fatalf("b status %+v %v", st, err)
	}
}

// TestCrashResume crashes PostgreSQL (immediate stop) while transactions
// stream and checks that every committed transaction arrives after the
// restart: none lost, and none twice once deduplicated by commit LSN.
func TestCrashResume(t *testing.T) {
	t.Parallel()
	c, dsn := ownClusterItems(t, pgtest.Options{})
	b := startStream(t, dsn, 0, func(o *Options) { o.TxBuffer = 2 })

	const n = 200
	for i := 0; i < n/2; i++ {
		exec(t, dsn, fmt.Sprintf(`INSERT INTO item VALUES (%d, 'x')`, i))
	}
	seen := map[string]bool{}
	take := func(k int) {
		for j := 0; j < k; j++ {
			tx := b.nextTx(t)
			for _, ch := range tx.Changes {
				seen[fmt.Sprint(col(t, ch, ch.New, "id"))] = true
			}
		}
	}
	take(20) // the rest is in flight or not yet decoded
	if err := c.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAgain(); err != nil {
		t.Fatal(err)
	}
	for i := n / 2; i < n; i++ {
		exec(t, dsn, fmt.Sprintf(`INSERT INTO item VALUES (%d, 'x')`, i))
	}
	for len(seen) < n {
		take(1)
	}
	st, _ := b.stream.Status(context.Background())
	if st.Reconnects == 0 {
		t.Fatal("the stream never reconnected")
	}
	for i := 0; i < n; i++ {
		if !seen[fmt.Sprint(i)] {
			t.Fatalf("row %d lost", i)
		}
	}
}

// TestFastShutdownNotHeldBack: a fast shutdown of the source (pg_ctl
// stop -m fast, a restart) lets the walsender exit only once the client
// has confirmed everything it sent, the shutdown checkpoint record
// included; until then the postmaster waits and refuses connections. The
// walsender asks for that reply in its keepalives, and the stream must
// hand out their WAL end as a position advance then, not only once per
// StatusInterval: otherwise every shutdown of a source with unpublished
// writes waited up to StatusInterval (10 s by default) for walhook. The
// interval here is an hour, so only the asked-for advance ends the wait;
// pgcluster gives up on a shutdown after 60 s and says so.
func TestFastShutdownNotHeldBack(t *testing.T) {
	t.Parallel()
	c, dsn := ownClusterItems(t, pgtest.Options{})
	exec(t, dsn, `CREATE TABLE busy (id int8)`) // not published, past the slot
	initial := slotConfirmed(t, dsn)
	var logs syncbuf.Buffer
	b := startStream(t, dsn, 0, func(o *Options) {
		o.StatusInterval = time.Hour
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(tWriter{t}, &logs), nil))
	})
	go func() { // the consumer: confirms every position advance
		for tx := range b.stream.Txs() {
			if tx.Final {
				b.stream.Confirm(tx.EndLSN)
			}
		}
	}()
	// The first position advance comes at once; the next one, paced,
	// would wait an hour.
	waitFor(t, "the first position advance", func() bool { return slotConfirmed(t, dsn) > initial })
	exec(t, dsn, `INSERT INTO busy VALUES (1)`)
	if err := c.Stop(); err != nil {
		t.Fatalf("fast shutdown of the source: %v", err)
	}
	if err := c.StartAgain(); err != nil {
		t.Fatal(err)
	}
	exec(t, dsn, `INSERT INTO item VALUES (1, 'after the restart')`)
	waitFor(t, "the stream to stream again", func() bool {
		st, _ := b.stream.Status(context.Background())
		return st.State == StateStreaming && st.Reconnects > 0
	})
	// The walsender ends the stream with CommandComplete: an orderly end,
	// said as such, not as something unexpected.
	if l := logs.String(); !strings.Contains(l, "the server ended the stream") || strings.Contains(l, "unexpected *pgproto3") {
		t.Errorf("the log does not say the server ended the stream:\n%s", l)
	}
}

// TestSlotInvalidated: a slot that fell behind max_slot_wal_keep_size is
// invalidated by PostgreSQL; Run stops with ErrSlotLost and Status shows it.
func TestSlotInvalidated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := ownClusterItems(t, pgtest.Options{Settings: map[string]string{
		"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0", "min_wal_size": "32MB", "max_wal_size": "64MB"}})
	for i := 0; i < 50; i++ {
		var status string
		queryRow(t, dsn, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = '`+slotFor(dsn)+`'`, &status)
		if status == "lost" {
			break
		}
		exec(t, dsn, `INSERT INTO item SELECT g, repeat('x', 100) FROM generate_series(`+fmt.Sprint(i*10000)+`, `+fmt.Sprint(i*10000+9999)+`) g`)
		exec(t, dsn, `SELECT pg_switch_wal()`)
		exec(t, dsn, `CHECKPOINT`)
	}
	b := startStream(t, dsn, 0, nil)
	err := b.runErr(t)
	wantErr(t, err, ErrSlotLost)
	t.Log(err)
	st, serr := b.stream.Status(ctx)
	wantErr(t, serr, ErrSlotLost)
	if st.WALStatus != "lost" || st.State != StateError {
		t.Fatalf("status %+v", st)
	}
}

// TestSlotDroppedWhileStreaming: the slot disappears under a running
// stream (its walsender terminated, the slot dropped): a specific error,
// and no new slot.
func TestSlotDroppedWhileStreaming(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	b := startStream(t, dsn, 0, func(o *Options) { o.MaxReconnectDelay = 3 * time.Second })
	waitFor(t, "streaming", func() bool { st, _ := b.stream.Status(ctx); return st.State == StateStreaming && st.Active })
	slot := slotFor(dsn)
	// pg_replication_slots is cluster-wide, and the tests running in
	// parallel on the shared cluster hold slots of their own; a logical
	// slot belongs to one database, so only this database's slots count.
	const ourSlots = `SELECT coalesce(string_agg(slot_name, ', '), '') FROM pg_replication_slots WHERE database = current_database()`
	var slots string
	queryRow(t, dsn, ourSlots, &slots)
	if slots != slot {
		t.Fatalf("slots of the test database: %q, want %q", slots, slot)
	}
	waitFor(t, "the slot to be dropped", func() bool {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return false
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active`, slot)
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot)
		return err == nil
	})
	wantErr(t, b.runErr(t), ErrSlotMissing)
	// Run has returned, so nothing of the stream can create one later.
	queryRow(t, dsn, ourSlots, &slots)
	if slots != "" {
		t.Fatalf("a slot was re-created: %s", slots)
	}
}

// slotConfirmed reads the slot's confirmed_flush_lsn.
func slotConfirmed(t *testing.T, dsn string) LSN {
	t.Helper()
	var s string
	queryRow(t, dsn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '`+slotFor(dsn)+`'`, &s)
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// A stream that waits for a held slot (start 0: the slot's position, as
// the dry run does) takes the slot's position when it gets the slot, not
// the one it read while the holder was still confirming: no false gap.
func TestWaitingConsumerFollowsTheSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	fast := func(o *Options) { o.StatusInterval = 100 * time.Millisecond }
	a := startStream(t, dsn, 0, fast)
	waitFor(t, "a to stream", func() bool { st, _ := a.stream.Status(ctx); return st.State == StateStreaming })
	b := startStream(t, dsn, 0, nil)
	waitFor(t, "b to wait for the slot", func() bool {
		st, _ := b.stream.Status(ctx)
		return st.State == StateWaitingForSlot && st.Active
	})
	before := slotConfirmed(t, dsn)
	exec(t, dsn, `INSERT INTO item VALUES (1, 'x')`)
	first := a.nextTx(t)
	waitFor(t, "the slot to move past a's transaction", func() bool { return slotConfirmed(t, dsn) >= first.EndLSN })
	if slotConfirmed(t, dsn) <= before {
		t.Fatal("the slot did not move")
	}
	a.stop(t)
	exec(t, dsn, `INSERT INTO item VALUES (2, 'y')`)
	if tx := b.nextTx(t); col(t, tx.Changes[0], tx.Changes[0].New, "id") != json.Number("2") {
		t.Fatalf("b got %+v, want the transaction after a's", tx)
	}
}

// A consumer that takes the slot over from another process sharing its
// store starts from the store's cursor as it is when it gets the slot
// (Options.Durable), not as it was when it began to wait: the holder kept
// storing and confirming meanwhile, and nothing was lost.
func TestTakeoverStartsFromDurable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	var cursor atomic.Uint64 // the shared store's cursor
	fast := func(o *Options) { o.StatusInterval = 100 * time.Millisecond }
	a := startStream(t, dsn, 0, fast)
	waitFor(t, "a to stream", func() bool { st, _ := a.stream.Status(ctx); return st.State == StateStreaming })
	stale := slotConfirmed(t, dsn)
	cursor.Store(uint64(stale))
	b := startStream(t, dsn, stale, func(o *Options) {
		o.Durable = func(context.Context) (LSN, bool, error) { return LSN(cursor.Load()), true, nil }
	})
	waitFor(t, "b to wait for the slot", func() bool {
		st, _ := b.stream.Status(ctx)
		return st.State == StateWaitingForSlot && st.Active
	})
	exec(t, dsn, `INSERT INTO item VALUES (1, 'x')`)
	tx := a.next(t)
	cursor.Store(uint64(tx.EndLSN)) // stored, then confirmed
	a.stream.Confirm(tx.EndLSN)
	waitFor(t, "the slot to move past a's transaction", func() bool { return slotConfirmed(t, dsn) >= tx.EndLSN })
	a.stop(t)
	exec(t, dsn, `INSERT INTO item VALUES (2, 'y')`)
	if got := b.nextTx(t); col(t, got.Changes[0], got.Changes[0].New, "id") != json.Number("2") {
		t.Fatalf("b got %+v, want the transaction after the stored one", got)
	}
}

// The walsender freezes (SIGSTOP: its host hangs, or a network drops
// packets without a reset): the connection stays open and says nothing.
// After asking for a reply halfway, the stream gives the connection up at
// ReceiveTimeout with a reason, connects again (waiting for the slot
// while the frozen walsender still holds it) and streams on once it is
// gone; nothing is lost.
func TestSilentServer(t *testing.T) {
	t.Parallel()
	_, dsn := ownClusterItems(t, pgtest.Options{})
	b := startStream(t, dsn, 0, func(o *Options) { o.ReceiveTimeout = 2 * time.Second })
	exec(t, dsn, `INSERT INTO item VALUES (1, 'x')`)
	b.stream.Confirm(b.nextTx(t).EndLSN)

	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slotFor(dsn)).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	for deadline := time.Now().Add(waitLimit); ; time.Sleep(50 * time.Millisecond) {
		st, _ := b.stream.Status(context.Background())
		if strings.Contains(st.LastError, "the server sent nothing for 2s, not even the reply asked for") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream never gave up the silent connection: state %s, last error %q", st.State, st.LastError)
		}
	}
	resume()
	exec(t, dsn, `INSERT INTO item VALUES (2, 'x')`)
	tx := b.nextTx(t)
	if got := fmt.Sprint(col(t, tx.Changes[0], tx.Changes[0].New, "id")); got != "2" {
		t.Fatalf("after the silence: row %s, want 2", got)
	}
	if st, _ := b.stream.Status(context.Background()); st.Reconnects == 0 || st.State != StateStreaming {
		t.Errorf("after the silence: %d reconnects, state %s", st.Reconnects, st.State)
	}
}

// ownClusterItems starts a cluster of the test's own (one it may crash,
// freeze or starve of WAL) and returns it with the DSN of a database
// holding the item table, published.
func ownClusterItems(t *testing.T, opts pgtest.Options) (*pgtest.Cluster, string) {
	t.Helper()
	c := pgtest.StartT(t, opts)
	db, err := c.CreateDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dsn := c.DSN(db)
	setupDB(t, dsn, itemSchema, "public.item")
	return c, dsn
}
