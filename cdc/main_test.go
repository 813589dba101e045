package cdc

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// waitLimit guards tests against hanging; it is not a timing assertion.
const waitLimit = 60 * time.Second

type testBundle struct {
	dsn    string
	stream *Stream
	cancel context.CancelFunc
	done   chan error
}

// testLogger routes the stream's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func exec(t testing.TB, dsn string, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

func queryRow(t testing.TB, dsn string, sql string, dst ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dst...); err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
}

// setupDB creates a database with schema, publishes tables and creates the slot.
func setupDB(t testing.TB, dsn, schema string, tables ...string) {
	t.Helper()
	if schema != "" {
		exec(t, dsn, schema)
	}
	if _, err := Setup(context.Background(), dsn, SetupOptions{Slot: slotFor(dsn), Publication: "walhook", Tables: tables}); err != nil {
		t.Fatalf("setup: %v", err)
	}
}

// startStream runs a stream on dsn from start.
func startStream(t testing.TB, dsn string, start LSN, mod func(*Options)) *testBundle {
	t.Helper()
	o := Options{DSN: dsn, Slot: slotFor(dsn), Publication: "walhook", Logger: testLogger(t),
		StatusInterval: time.Second, MaxReconnectDelay: time.Second}
	if mod != nil {
		mod(&o)
	}
	s, err := NewStream(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &testBundle{dsn: dsn, stream: s, cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- s.Run(ctx, start) }()
	t.Cleanup(func() { b.stop(t) })
	return b
}

func (b *testBundle) stop(t testing.TB) error {
	b.cancel()
	select {
	case err, ok := <-b.done:
		if ok {
			close(b.done)
			if err != nil {
				t.Logf("Run: %v", err)
			}
			return err
		}
		return nil
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after cancel")
	}
	return nil
}

// runErr waits for Run to return by itself.
func (b *testBundle) runErr(t testing.TB) error {
	t.Helper()
	select {
	case err := <-b.done:
		close(b.done)
		return err
	case <-time.After(waitLimit):
		t.Fatal("Run did not return")
	}
	return nil
}

// next returns the next Tx value with changes (a chunk or a whole small
// transaction), confirming position advances on the way. It does not
// confirm transactions with changes: callers do.
func (b *testBundle) next(t testing.TB) *Tx {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		select {
		case tx := <-b.stream.Txs():
			if len(tx.Changes) == 0 && tx.Final {
				b.stream.Confirm(tx.EndLSN)
				continue
			}
			return tx
		case err := <-b.done:
			t.Fatalf("Run returned while waiting for a transaction: %v", err)
		case <-deadline:
			t.Fatal("no transaction arrived")
		}
	}
}

// nextTx returns the next whole transaction with changes and confirms it.
func (b *testBundle) nextTx(t testing.TB) *Tx {
	t.Helper()
	tx := b.next(t)
	if !tx.Final {
		t.Fatalf("got a partial chunk %d of xid %d with %d changes", tx.Chunk, tx.Xid, len(tx.Changes))
	}
	b.stream.Confirm(tx.EndLSN)
	return tx
}

// waitFor polls cond until it holds (a guard, not a timing assertion).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slotFor names a test database's slot: slot names are cluster-wide.
func slotFor(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		panic(err)
	}
	return "s_" + strings.TrimPrefix(u.Path, "/")
}

func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}
