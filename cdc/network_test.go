package cdc

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/faultproxy"
	"github.com/walhook/walhook/internal/pgtest"
)

// Network faults on the source's connections, injected by a TCP proxy
// (internal/faultproxy) between the stream and PostgreSQL.

// viaProxy starts a fault proxy in front of dsn's server and returns it
// with dsn pointed at it.
func viaProxy(t *testing.T, dsn string) (*faultproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Port() == "" {
		t.Fatalf("DSN %q is not a TCP URL: %v", dsn, err)
	}
	p, err := faultproxy.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	u.Host = fmt.Sprintf("127.0.0.1:%d", p.Port())
	return p, u.String()
}

// The network drops, without a word, the connection of the slot's
// preflight query and then the replication connection just as it sends
// START_REPLICATION: each is given up on after ReceiveTimeout, and the
// stream connects again and streams. Before, each waited for as long as
// TCP takes, forever behind a middlebox that keeps the socket open.
func TestStreamStartBlackholed(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	p, pdsn := viaProxy(t, dsn)
	pre := p.AddRule(&faultproxy.Rule{Match: []byte("pg_replication_slots"), After: -1, Action: faultproxy.BlackholeConn})
	start := p.AddRule(&faultproxy.Rule{Match: []byte("START_REPLICATION"), After: -1, Action: faultproxy.BlackholeConn})
	exec(t, dsn, `INSERT INTO item VALUES (1, 'a')`)
	b := startStream(t, pdsn, 0, func(o *Options) { o.ReceiveTimeout = 3 * time.Second })
	began := time.Now()
	tx := b.nextTx(t)
	if len(tx.Changes) != 1 {
		t.Fatalf("first transaction: %+v", tx)
	}
	if pre.Fired() != 1 || start.Fired() != 1 {
		t.Errorf("the blackholes fired %d and %d times, want once each", pre.Fired(), start.Fired())
	}
	t.Logf("streamed %s after both blackholes", time.Since(began).Round(100*time.Millisecond))
}

// The replication connection is blackholed mid-stream (packets dropped,
// no reset): the stream hears nothing for ReceiveTimeout, connects again,
// and hands out the changes written meanwhile, once each after the last
// one handed out.
func TestStreamBlackholedMidStream(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	p, pdsn := viaProxy(t, dsn)
	b := startStream(t, pdsn, 0, func(o *Options) { o.ReceiveTimeout = 3 * time.Second })
	exec(t, dsn, `INSERT INTO item VALUES (1, 'a')`)
	first := b.nextTx(t)
	b.stream.Confirm(first.EndLSN)
	p.Blackhole()
	exec(t, dsn, `INSERT INTO item VALUES (2, 'b')`)
	began := time.Now()
	second := b.nextTx(t)
	if second.Xid == first.Xid || len(second.Changes) != 1 {
		t.Fatalf("after the blackhole: %+v (first %+v)", second, first)
	}
	if took := time.Since(began); took > 3*time.Second+20*time.Second {
		t.Errorf("the stream took %s to come back, want about ReceiveTimeout (3s) and a reconnect", took)
	}
}

// The replication connection is reset mid-message inside a transaction
// larger than MaxChunkChanges, usually after some of its chunks were
// handed out: the stream connects again and hands the whole transaction
// out again from its first chunk (nothing of it was confirmed), with the
// same positions, so a consumer that stored the first chunks stores the same
// events again; nothing is skipped and no chunk arrives out of order.
func TestStreamResetInsideAChunkedTransaction(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	p, pdsn := viaProxy(t, dsn)
	exec(t, dsn, `INSERT INTO item SELECT g, 'x', repeat('n', 200) FROM generate_series(1, 1000) g`)
	// About a third of the transaction's 1000 changes (some 300 bytes each).
	cut := p.AddRule(&faultproxy.Rule{Match: []byte("START_REPLICATION"), After: 100_000})
	b := startStream(t, pdsn, 0, func(o *Options) { o.MaxChunkChanges = 100 })
	var firstXid uint32
	restarts, seen := 0, 0
	for {
		tx := b.next(t)
		if len(tx.Changes) == 0 {
			continue
		}
		if firstXid == 0 {
			firstXid = tx.Xid
		}
		if tx.Xid != firstXid {
			t.Fatalf("xid %d before xid %d was whole", tx.Xid, firstXid)
		}
		if tx.Chunk == 0 && seen > 0 {
			restarts++
			seen = 0
		}
		for i, c := range tx.Changes {
			if want := seen + i; c.Position != want {
				t.Fatalf("chunk %d: change %d at position %d, want %d", tx.Chunk, i, c.Position, want)
			}
		}
		seen += len(tx.Changes)
		if tx.Final {
			b.stream.Confirm(tx.EndLSN)
			break
		}
	}
	// How many chunks came before the cut depends on what the reset
	// discarded (a reset drops what its sockets still buffer).
	if seen != 1000 || cut.Fired() != 1 {
		t.Errorf("the transaction ended after %d changes, the cut fired %d times; want 1000 and once", seen, cut.Fired())
	}
	t.Logf("the transaction began again %d times", restarts)
}

// The process id of the stream's last walsender, once that walsender is
// gone, may be another's: here another stream's walsender holding the
// slot (another consumer, or a walhook on another store) has the id the
// stream remembers. The stream waits for the slot; it does not end that
// walsender, which began after the stream's last connection did.
func TestStreamDoesNotEndAWalsenderThatReusedItsPID(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	exec(t, dsn, `INSERT INTO item VALUES (1, 'a')`)
	a := startStream(t, dsn, 0, nil)
	a.nextTx(t)
	pid := a.stream.walsender.Load()
	s, err := NewStream(Options{DSN: dsn, Slot: slotFor(dsn), Publication: "walhook", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Its last connection was to a walsender with that id, long gone.
	s.walsender.Store(pid)
	long := "1"
	s.walsenderStart.Store(&long)
	if _, err := s.preflight(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	exec(t, dsn, `INSERT INTO item VALUES (2, 'b')`)
	tx := a.nextTx(t)
	if a.stream.walsender.Load() != pid {
		t.Fatalf("the other stream's walsender %d was ended (it reconnected as %d) for %+v", pid, a.stream.walsender.Load(), tx)
	}
}
