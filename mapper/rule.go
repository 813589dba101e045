package mapper

import (
	"log/slog"

	"github.com/walhook/walhook/cdc"
)

// Rule maps changes of one table to one event type. It is the mapper's own
// form of a configured rule; cmd/walhook converts config.Rule into it.
type Rule struct {
	// Event is the event type, e.g. "problem.status_changed".
	Event       string
	Description string
	// Table is "schema.table", or "table" for schema public.
	Table string
	// Ops are the operations the rule fires on: cdc.OpInsert, OpUpdate,
	// OpDelete.
	Ops []cdc.Op
	// Changed: for updates, fire only when at least one of these columns
	// differs by value between the old and the new row. Needs old values.
	Changed []string
	// When is an optional boolean expr-lang expression over `old`, `new`
	// (maps of column to value; nil for an absent row) and `op` ("insert",
	// "update", "delete").
	When string
	// AuctionID names the column holding the auction id: "col", "new.col"
	// or "old.col". Empty: column auction_id when the table has one.
	AuctionID string
	// Domain names the column holding the sns envelope's domain, same form.
	// Empty: Options.Domain when set, else column domain when the table has
	// one.
	Domain string
	// Envelope is the body shape; empty means Options.Envelope.
	Envelope Envelope
	// Data shapes the event's data object, in order. Empty: the whole row
	// (the new row; the old row for deletes).
	Data []DataField
	// Where prefixes every error about this rule, e.g.
	// "walhook.yaml:12:5: events[3]".
	Where string
	// WhenWhere, when set, replaces Where in errors about When (the line
	// of the when: value), e.g. "walhook.yaml:15:11: events[3].when".
	WhenWhere string
}

// DataField is one key of the data object.
type DataField struct {
	Key string
	// Column is the column; From is "new", "old" or "" (the new row, or the
	// old row for deletes).
	Column string
	From   string
	// IsConst marks a constant; Const is any JSON-encodable value.
	IsConst bool
	Const   any
	// Where, when set, replaces the rule's Where in errors about this field.
	Where string
}

// Options are the mapper's settings.
type Options struct {
	// SystemID is the source's system identifier (IDENTIFY_SYSTEM); it
	// makes event ids unique across databases sharing one store.
	SystemID string
	// Envelope is the default body shape (default auction-excellence).
	Envelope Envelope
	// Domain is a constant domain for sns rules that name no column.
	Domain string
	// Logger receives skipped events (unavailable TOAST values). Default:
	// slog.Default().
	Logger *slog.Logger
}

// Stats are counters since Compile.
type Stats struct {
	Changes uint64 // row changes looked at
	Events  uint64 // events produced
	// SkippedUnavailable counts events not produced because a value they
	// need was an unchanged TOAST value PostgreSQL did not send.
	SkippedUnavailable uint64
	// WhenUnknown counts rule evaluations whose when failed on a NULL
	// (or a json key that is missing or null) and so did not match (SQL's
	// unknown).
	WhenUnknown uint64
}

// TableSchema is what CheckSchema needs to know about one source table.
type TableSchema struct {
	// Columns are the columns logical replication sends, in order.
	Columns []string
	// Generated are the generated columns, which PostgreSQL 15's
	// logical replication does not send.
	Generated []string
	// Keys are the replica identity's columns (the primary key under
	// DEFAULT). Optional: nil means unknown, and delete rules then need FULL
	// for every old column they read.
	Keys []string
	// ReplicaIdentity is pg_class.relreplident: 'd' default, 'f' full,
	// 'i' index, 'n' nothing.
	ReplicaIdentity byte
	// OID is pg_class.oid (0: unknown): a change announced under another
	// name for this OID is a rename of a rule table.
	OID uint32
	// Types are the columns' type OIDs, one per column of Columns, a
	// domain's the built-in type it ends in (0: unknown); TypeNames their
	// names as format_type gives them. Optional: without them `when:` is
	// not checked against the column types.
	Types     []uint32
	TypeNames []string
	// EnumLabels are, per column of an enum type (or a domain over one),
	// the enum's labels: a when: comparing the column with another
	// string never holds. Optional.
	EnumLabels map[string][]string
	// PartitionKeys are the columns a partitioned table (and its
	// partitioned partitions) is partitioned by. Optional.
	PartitionKeys []string
}

// EventType is one entry of the event catalog.
type EventType struct {
	Type        string
	Description string
	Envelope    Envelope
}
