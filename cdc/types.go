package cdc

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a PostgreSQL WAL position.
type LSN = pglogrepl.LSN

// Op is the kind of a change.
type Op uint8

const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
	OpTruncate
	// OpMessage is a transactional logical decoding message
	// (pg_logical_emit_message(true, …)); heartbeats are not passed on.
	OpMessage
)

func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	case OpMessage:
		return "message"
	}
	return "unknown"
}

// Column describes one column of a relation as pgoutput announced it.
type Column struct {
	Name    string
	TypeOID uint32
	// Key is true for columns of the replica identity (pgoutput flag 1).
	Key bool
}

// Relation is a table as last announced by a Relation message. A new
// *Relation is created for every Relation message (DDL changes it), so
// consumers may cache per pointer.
type Relation struct {
	OID     uint32
	Schema  string
	Name    string
	Columns []Column
	// ReplicaIdentity is pgoutput's setting: 'd' default, 'f' full,
	// 'i' index, 'n' nothing.
	ReplicaIdentity byte
}

// Table returns "schema.name".
func (r *Relation) Table() string { return r.Schema + "." + r.Name }

// ColumnIndex returns the position of column name, or -1.
func (r *Relation) ColumnIndex(name string) int {
	for i := range r.Columns {
		if r.Columns[i].Name == name {
			return i
		}
	}
	return -1
}

// ValueState says whether a Value carries data.
type ValueState uint8

const (
	// Present: V holds the decoded value (never nil).
	Present ValueState = iota
	// Null: SQL NULL.
	Null
	// Unavailable: an unchanged TOAST value that PostgreSQL did not send and
	// that could not be filled from an old row (table without REPLICA
	// IDENTITY FULL). It is not null: the mapper must refuse to use it.
	Unavailable
	// Absent: the column was not sent at all (old row under DEFAULT identity
	// carries only key columns).
	Absent
)

// Value is one decoded column value, JSON-ready:
//   - bool, int16/int32 as int64, float4/float8 as float64
//   - int8 and numeric as json.Number (no precision lost)
//   - NaN, Infinity and -Infinity of numeric, float4 and float8: NonFinite
//   - text, varchar, uuid, enums, unknown types: string
//   - timestamptz: time.Time in UTC (rendered RFC 3339 with "Z")
//   - timestamp (without time zone): time.Time in NoZone, its wall clock
//     read as UTC (rendered without a zone)
//   - 'infinity' and '-infinity' of timestamptz and timestamp: InfiniteTime;
//     BC and years past 9999 keep the server's text (string)
//   - date: string "YYYY-MM-DD" ("infinity", "-infinity")
//   - json/jsonb: json.RawMessage
//   - bytea: []byte
//   - arrays: []any of the element kinds above
type Value struct {
	State ValueState
	V     any
}

// NonFinite is a numeric, float4 or float8 value that is not a finite
// number, as PostgreSQL prints it: "NaN", "Infinity" or "-Infinity". JSON
// has no such numbers, so it stays that text (and marshals as a JSON
// string); it has a type of its own so that a consumer can tell it from a
// text column that says "NaN" and take it for the number it is.
type NonFinite string

// InfiniteTime is a timestamptz or timestamp 'infinity' or '-infinity', as
// PostgreSQL prints it ("infinity", "-infinity"): later or earlier than
// every other time, and no time.Time. It marshals as that JSON string; it
// has a type of its own so that a consumer can tell it from text and order
// it among times.
type InfiniteTime string

// Change is one row change (or truncate, or message) inside a transaction.
type Change struct {
	Op  Op
	Rel *Relation // nil for OpMessage; for OpTruncate the first of Rels
	// New is the new row (insert, update), aligned with Rel.Columns.
	New []Value
	// Old is the old row (update, delete) aligned with Rel.Columns, or nil
	// when PostgreSQL sent none (update without key change under DEFAULT
	// identity). When OldKeyOnly, only key columns are Present; the others
	// are Absent.
	Old        []Value
	OldKeyOnly bool
	// Position is the 0-based index of the change within its transaction,
	// counted across chunks; stable on replay.
	Position int
	// LSN is the WAL position of the change record.
	LSN LSN

	// Truncate: every relation truncated together.
	Rels []*Relation
	// Message: prefix and content of a logical decoding message.
	Prefix  string
	Content []byte
}

// Tx is a committed transaction, or a chunk of one. Large transactions are
// handed over in chunks of bounded size so they are never held whole in
// memory; every chunk carries the transaction's Xid, CommitLSN and
// CommitTime (known from the Begin message). Only the final chunk carries
// EndLSN; a consumer confirms EndLSN only after it has made every chunk of
// the transaction durable. A replay after a crash resends all chunks, so
// consumers must be idempotent (deterministic event ids).
//
// A Final Tx with no Changes (Xid may be 0) is a position advance: a
// heartbeat, or the server's WAL end while nothing published was pending.
// Consumers persist its EndLSN as their cursor and Confirm it like any other,
// so cdc never confirms a position the consumer has not recorded and the
// slot never retains WAL for an idle or filtered database.
type Tx struct {
	Xid        uint32
	CommitLSN  LSN // Begin.FinalLSN: the commit record's LSN
	EndLSN     LSN // Commit.TransactionEndLSN; zero unless Final
	CommitTime time.Time
	Origin     string
	Changes    []Change
	// Chunk is the 0-based chunk number; Final is true on the last chunk.
	Chunk int
	Final bool
}
