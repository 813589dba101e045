package cdc

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/walhook/walhook/internal/pgtest"
)

// TestLargeTransaction streams a 1,000,000-row transaction: it arrives in
// chunks of at most MaxChunkChanges with contiguous positions, only the last
// chunk is Final, and the heap stays bounded while it drains.
func TestLargeTransaction(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000,000 rows")
	}
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, `CREATE TABLE big (id int8 PRIMARY KEY, v text)`, "public.big")
	exec(t, dsn, `INSERT INTO big SELECT g, 'value ' || g FROM generate_series(1, 1000000) g`)
	b := startStream(t, dsn, 0, nil)

	const rows = 1000000
	var (
		next     int
		chunks   int
		maxHeap  uint64
		ms       runtime.MemStats
		xid      uint32
		commit   pglogrepl.LSN
		finalEnd pglogrepl.LSN
	)
	for next < rows {
		tx := b.next(t)
		if chunks == 1 {
			// A slow consumer: let the stream fill the channel and block.
			waitFor(t, "the Txs channel to hold the change budget", func() bool { return len(b.stream.Txs()) == 4 })
			time.Sleep(time.Second) // give the stream time to overrun the budget, if it would
			if n := len(b.stream.Txs()); n != 4 {
				t.Fatalf("%d chunks buffered, want 4 (MaxBufferedChanges = 4 × MaxChunkChanges)", n)
			}
			runtime.GC()
			runtime.ReadMemStats(&ms)
			t.Logf("change budget full: HeapInuse %d MB", ms.HeapInuse>>20)
			maxHeap = max(maxHeap, ms.HeapInuse)
		}
		if chunks == 0 {
			xid, commit = tx.Xid, tx.CommitLSN
		}
		if tx.Xid != xid || tx.CommitLSN != commit || tx.Chunk != chunks {
			t.Fatalf("chunk %d: xid %d commit %s chunk %d", chunks, tx.Xid, tx.CommitLSN, tx.Chunk)
		}
		if len(tx.Changes) > 10000 {
			t.Fatalf("chunk of %d changes", len(tx.Changes))
		}
		for i := range tx.Changes {
			if tx.Changes[i].Position != next {
				t.Fatalf("position %d, want %d", tx.Changes[i].Position, next)
			}
			next++
		}
		if tx.Final != (next == rows) {
			t.Fatalf("chunk %d Final=%v after %d rows", chunks, tx.Final, next)
		}
		if !tx.Final && tx.EndLSN != 0 {
			t.Fatalf("non-final chunk carries EndLSN %s", tx.EndLSN)
		}
		finalEnd = tx.EndLSN
		chunks++
		if chunks%10 == 0 {
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapInuse)
		}
	}
	b.stream.Confirm(finalEnd)
	t.Logf("%d chunks, max HeapInuse %d MB", chunks, maxHeap>>20)
	if chunks != 100 {
		t.Fatalf("%d chunks, want 100", chunks)
	}
	if maxHeap > 100<<20 {
		t.Fatalf("HeapInuse reached %d MB while draining, want < 100 MB", maxHeap>>20)
	}
	waitFor(t, "the transaction's end to be confirmed", func() bool {
		st, err := b.stream.Status(context.Background())
		return err == nil && st.ConfirmedFlushLSN >= finalEnd
	})
}

// TestIdleTablesRetainNothing: heavy writes to an unpublished table while
// the published one is idle must not make the slot retain WAL: heartbeats
// and keepalive position advances move confirmed_flush_lsn along.
func TestIdleTablesRetainNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema+`CREATE TABLE busy (id int8, pad text)`, "public.item")
	b := startStream(t, dsn, 0, func(o *Options) { o.HeartbeatInterval = 200 * time.Millisecond })
	go func() { // the consumer: confirms every position advance
		for tx := range b.stream.Txs() {
			if tx.Final {
				b.stream.Confirm(tx.EndLSN)
			}
		}
	}()
	for i := 0; i < 20; i++ {
		exec(t, dsn, `INSERT INTO busy SELECT g, repeat('x', 500) FROM generate_series(1, 5000) g`)
	}
	var end string
	queryRow(t, dsn, `SELECT pg_current_wal_lsn()::text`, &end)
	endLSN, _ := pglogrepl.ParseLSN(end)
	waitFor(t, "confirmed_flush_lsn to pass the busy writes", func() bool {
		st, err := b.stream.Status(ctx)
		return err == nil && st.ConfirmedFlushLSN >= endLSN
	})
	exec(t, dsn, `CHECKPOINT`)
	waitFor(t, "retained WAL to shrink", func() bool {
		exec(t, dsn, `CHECKPOINT`) // logs running xacts, which moves restart_lsn
		st, err := b.stream.Status(ctx)
		t.Logf("retained %d bytes, lag %d bytes", st.RetainedBytes, st.LagBytes)
		return err == nil && st.RestartLSN >= endLSN && st.RetainedBytes < 1<<20
	})
}
