package cdc

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Sentinel errors. Run returns them (wrapped, with detail) when the
// replication side cannot continue without an operator: each one is a gap in
// the data or a risk of one, so walhook never works around it silently (for
// example by re-creating a slot).
var (
	// ErrSlotMissing: the replication slot does not exist (dropped, or never
	// created: run `walhook setup`). Re-creating it would skip every change
	// made since it was dropped.
	ErrSlotMissing = errors.New("replication slot does not exist")
	// ErrSlotLost: PostgreSQL invalidated the slot (wal_status = 'lost'),
	// usually because it retained more than max_slot_wal_keep_size. The WAL
	// it needed is gone, so changes have been lost.
	ErrSlotLost = errors.New("replication slot was invalidated (wal_status = 'lost')")
	// ErrPublicationMissing: the publication named in the config does not
	// exist (run `walhook setup`).
	ErrPublicationMissing = errors.New("publication does not exist")
	// ErrSlotActive: another process holds the slot. Run waits and retries
	// on it; Teardown refuses with it unless forced.
	ErrSlotActive = errors.New("replication slot is active in another process")
	// ErrCursorBehindSlot: the store's cursor is below the slot's
	// confirmed_flush_lsn, so PostgreSQL no longer has the transactions in
	// between: the store lost data (restored from an old backup, or another
	// consumer advanced the slot).
	ErrCursorBehindSlot = errors.New("store cursor is behind the replication slot's confirmed_flush_lsn")
	// ErrCursorAhead: the store's cursor is past the server's WAL end, a
	// position this server never wrote: the store followed another history
	// of the cluster (a failover to a standby that was behind, a
	// point-in-time restore). Streaming from it would skip every change the
	// server writes up to it.
	ErrCursorAhead = errors.New("store cursor is ahead of the server's WAL")
	// ErrSystemChanged: the source DSN reaches another PostgreSQL system
	// than when the stream began (Options.SystemID): the database moved to
	// another cluster, whose positions have nothing to do with the
	// cursor's.
	ErrSystemChanged = errors.New("the source's PostgreSQL system changed")
	// ErrSourceStandby: the source server is a standby (in recovery).
	// walhook's publication and slot live on the primary: a standby can
	// create neither, its pg_replication_slots does not list the
	// primary's, and PostgreSQL 15 cannot decode changes on it.
	ErrSourceStandby = errors.New("the source server is a standby (in recovery)")
	// ErrProtocol: the server sent something this decoder does not know
	// (a pgoutput message type, tuple kind or layout). Continuing could
	// misread data, so the stream stops.
	ErrProtocol = errors.New("pgoutput protocol error")
)

// ProtocolError describes what in the stream could not be decoded.
type ProtocolError struct {
	LSN    LSN
	Detail string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("pgoutput protocol error at %s: %s", e.LSN, e.Detail)
}

func (e *ProtocolError) Unwrap() error { return ErrProtocol }

// permanent reports whether Run must stop instead of reconnecting.
// CursorAheadError is ErrCursorAhead with its positions: the consumer's
// durable cursor and the server's WAL end when it was found past it.
type CursorAheadError struct {
	Cursor, WALEnd LSN
	Slot           string
	SlotLSN        LSN
}

func (e *CursorAheadError) Error() string {
	return fmt.Sprintf("%v: cursor %s > WAL end %s of the server: the store holds positions this server never wrote "+
		"(a failover to a standby that was behind, or a point-in-time restore of the source), and streaming from the "+
		"cursor would skip every change the server writes up to it; to start from slot %q at %s instead, run "+
		"walhook setup --accept-gap", ErrCursorAhead, e.Cursor, e.WALEnd, e.Slot, e.SlotLSN)
}

func (e *CursorAheadError) Unwrap() error { return ErrCursorAhead }

func permanent(err error) bool {
	return errors.Is(err, ErrSlotMissing) || errors.Is(err, ErrSlotLost) ||
		errors.Is(err, ErrPublicationMissing) || errors.Is(err, ErrCursorBehindSlot) || errors.Is(err, ErrCursorAhead) ||
		errors.Is(err, ErrProtocol) || errors.Is(err, ErrSourceStandby) || errors.Is(err, ErrSystemChanged)
}

// StandbyWhy says why walhook cannot use a standby as its source.
const StandbyWhy = "walhook's publication and replication slot live on the primary; a standby can create neither, " +
	"does not list the primary's slots, and walhook streams only from the primary (PostgreSQL 15 cannot decode on a standby at all)"

// StandbyFix is what to do when the source DSN reaches a standby. It
// names target_session_attrs=primary, not read-write: walhook only reads
// the source, and read-write refuses a role whose
// default_transaction_read_only is on, also on the primary.
const StandbyFix = "point source.dsn at the primary (with several hosts in it, add target_session_attrs=primary)"

// RefuseStandby returns an error wrapping ErrSourceStandby, with what to
// do, when conn's server is in recovery.
func RefuseStandby(ctx context.Context, conn *pgx.Conn) error {
	var recovery bool
	if err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovery); err != nil {
		return fmt.Errorf("read pg_is_in_recovery(): %w", err)
	}
	if !recovery {
		return nil
	}
	return fmt.Errorf("%w: %s — fix: %s", ErrSourceStandby, StandbyWhy, StandbyFix)
}
