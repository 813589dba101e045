package mapper_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/pgtest"
)

// streamTxs loads schema into a fresh database, publishes tables through a
// new slot, runs stmts and hands each streamed transaction to each (which
// confirms it), up to a closing logical message.
func streamTxs(t *testing.T, schema string, tables, stmts []string, each func(s *cdc.Stream, tx *cdc.Tx)) {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, schema); err != nil {
		t.Fatalf("schema: %v", err)
	}
	u, _ := url.Parse(dsn)
	slot := "m_" + strings.TrimPrefix(u.Path, "/")
	if _, err := cdc.Setup(ctx, dsn, cdc.SetupOptions{Slot: slot, Publication: "walhook", Tables: tables}); err != nil {
		t.Fatalf("setup: %v", err)
	}
	s, err := cdc.NewStream(cdc.Options{DSN: dsn, Slot: slot, Publication: "walhook",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), StatusInterval: time.Second, MaxReconnectDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx, 0) }()
	defer func() {
		cancel()
		<-done
	}()
	for i, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("statement %d: %v\n%s", i+1, err, stmt)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(true, 'walhook-test', 'end')`); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(60 * time.Second) // a guard against hanging, not a timing assertion
	for {
		var tx *cdc.Tx
		select {
		case tx = <-s.Txs():
		case err := <-done:
			t.Fatalf("stream stopped: %v", err)
		case <-deadline:
			t.Fatal("the transactions did not all arrive")
		}
		if len(tx.Changes) > 0 && tx.Changes[0].Op == cdc.OpMessage && tx.Changes[0].Prefix == "walhook-test" {
			return
		}
		each(s, tx)
	}
}
