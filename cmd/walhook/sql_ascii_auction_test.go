package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
)

// A SQL_ASCII source (Latin-1 bytes in it) with the store in a UTF8
// database: the envelope's auction_id and sns domain become U+FFFD where
// their bytes are not UTF-8, as text and json values do. They were the
// column's bytes as they were, and the store's INSERT failed ("invalid
// byte sequence for encoding UTF8") on every restart, holding up
// everything after that transaction.
func TestRunEnvelopeFieldsWithNonUTF8BytesInAUTF8Store(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	name := fmt.Sprintf("asciiauc_%d_%d", os.Getpid(), asciiSeq.Add(1))
	if err := c.Exec(ctx, "postgres", `CREATE DATABASE `+name+` ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DropDatabase(context.Background(), name) })
	dsn := c.DSN(name)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, `CREATE TABLE bids (id int PRIMARY KEY, auction_id text, domain text)`); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: dsn, pool: pool, schema: "walhook", slot: "wh_" + name}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	storeDSN := c.NewDatabase(t) // UTF8
	s["store.dsn"] = storeDSN
	if _, err := dispatch.Migrate(ctx, testPool(t, storeDSN), "walhook"); err != nil {
		t.Fatal(err)
	}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
mapping:
  envelope: sns
events:
  - event: auction.bid
    table: public.bids
    operations: [insert]
    data: [id]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	// "caf\xe9" in Latin-1: valid data of a SQL_ASCII database.
	db.exec(t, `INSERT INTO bids VALUES (1, convert_from('\x63616ee9'::bytea, 'SQL_ASCII'), convert_from('\x636166e92e736f6c'::bytea, 'SQL_ASCII'))`)
	db.exec(t, `INSERT INTO bids VALUES (2, 'auction_2', 'example.sol')`)
	deadline := time.Now().Add(30 * time.Second)
	for rc.Unique() < 2 && time.Now().Before(deadline) {
		if strings.Contains(p.stderr.String(), "invalid byte sequence") {
			break
		}
		if _, stopped := p.exited(); stopped {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rc.Unique() < 2 {
		t.Fatalf("%d of 2 bids delivered in 30s; walhook log:\n%s", rc.Unique(), runTail(p.stderr.String(), 2500))
	}
}

// An auction id kept as 16 raw bytes (a bytea uuid) goes to the envelope
// as base64, as a bytea renders in data: it went as the raw bytes, which
// no UTF8 text column takes ("invalid byte sequence for encoding UTF8:
// 0x00"), and every Append failed.
func TestRunByteaAuctionID(t *testing.T) {
	t.Parallel()
	db, rc, p := oneTableRun(t, `CREATE TABLE lots (id int PRIMARY KEY, auction_id bytea);`, `  - event: lot.created
    table: public.lots
    operations: [insert]
    data: [id, auction_id]
`)
	db.exec(t, `INSERT INTO lots VALUES (1, '\x00a0000000004000800000000000000001')`)
	db.exec(t, `INSERT INTO lots VALUES (2, '\x01')`)
	waitDelivered(t, p, rc, 2, "both lots delivered")
}
