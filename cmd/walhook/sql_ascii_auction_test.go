package main

import (
	"testing"
)

// A SQL_ASCII source (Latin-1 bytes in it) with the store in a UTF8
// database: the envelope's auction_id and sns domain become U+FFFD where
// their bytes are not UTF-8, as text and json values do. They were the
// column's bytes as they were, and the store's INSERT failed ("invalid
// byte sequence for encoding UTF8") on every restart, holding up
// everything after that transaction.
func TestRunEnvelopeFieldsWithNonUTF8BytesInAUTF8Store(t *testing.T) {
	t.Parallel()
	db, rc, file := sqlASCIIRun(t, `CREATE TABLE bids (id int PRIMARY KEY, auction_id text, domain text)`, `mapping:
  envelope: sns
events:
  - event: auction.bid
    table: public.bids
    operations: [insert]
    data: [id]
`, true)
	p := startRunProc(t, "--config", file)
	// "caf\xe9" in Latin-1: valid data of a SQL_ASCII database.
	db.exec(t, `INSERT INTO bids VALUES (1, convert_from('\x63616ee9'::bytea, 'SQL_ASCII'), convert_from('\x636166e92e736f6c'::bytea, 'SQL_ASCII'))`)
	db.exec(t, `INSERT INTO bids VALUES (2, 'auction_2', 'example.sol')`)
	waitDelivered(t, p, rc, 2, "both bids delivered")
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
