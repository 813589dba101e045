package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/config"
)

// storeWritable's error for a store that does not answer (here: its
// session was terminated between the ping and the check) got the
// read-only fix — "point store.dsn at the primary … or turn
// default_transaction_read_only off" — in run's, setup's and check's
// messages, which sends an operator after the wrong problem. Only a store
// that answers read-only gets it.
func TestStoreWritableFixOnlyForReadOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newRunDB(t, `SELECT 1`)
	twoDSNs := &config.Config{Source: config.Source{DSN: "dbname=app"}, Store: config.Store{DSN: "dbname=store"}}
	pc, err := pgxpool.ParseConfig(db.dsn)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var pid int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	db.exec(t, `SELECT pg_terminate_backend($1)`, pid)
	err = storeWritable(ctx, pool)
	if err == nil {
		t.Skip("the pool replaced the terminated session before the check")
	}
	if errors.Is(err, errStoreReadOnly) || readOnlyFix(twoDSNs, err) != "" {
		t.Fatalf("a store that did not answer (%v) gets the read-only fix %q", err, readOnlyFix(twoDSNs, err))
	}

	sep := "?"
	if strings.Contains(db.dsn, "?") {
		sep = "&"
	}
	ro, err := pgxpool.New(ctx, db.dsn+sep+"options=-c%20default_transaction_read_only%3Don")
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	err = storeWritable(ctx, ro)
	if !errors.Is(err, errStoreReadOnly) || !strings.Contains(readOnlyFix(twoDSNs, err), "point store.dsn at the primary") {
		t.Fatalf("a read-only store: %v, fix %q", err, readOnlyFix(twoDSNs, err))
	}
}
