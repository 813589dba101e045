package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

const cursorSQL = `SELECT lsn::text, system_id FROM {{schema}}.cursor WHERE slot = $1`

// Cursor returns the end LSN of the last transaction made durable for slot,
// and the source system id it came from; ok is false before the first
// Append. cdc starts replication from it.
func (d *Dispatcher) Cursor(ctx context.Context, slot string) (lsn cdc.LSN, systemID string, ok bool, err error) {
	return readCursor(ctx, d.pool, d.q(cursorSQL), slot)
}

// StoredCursor is Cursor for a store that no Dispatcher runs on (check,
// setup); ok is false when the store holds no cursor for slot.
func StoredCursor(ctx context.Context, pool *pgxpool.Pool, schema, slot string) (lsn cdc.LSN, systemID string, ok bool, err error) {
	return readCursor(ctx, pool, strings.ReplaceAll(cursorSQL, "{{schema}}", quoteIdent(schema)), slot)
}

func readCursor(ctx context.Context, q querier, sql, slot string) (lsn cdc.LSN, systemID string, ok bool, err error) {
	var s string
	err = q.QueryRow(ctx, sql, slot).Scan(&s, &systemID)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, fmt.Errorf("read cursor of slot %q: %w", slot, err)
	}
	lsn, err = pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, "", false, fmt.Errorf("read cursor of slot %q: %w", slot, err)
	}
	return lsn, systemID, true, nil
}

// AcceptGap moves slot's cursor from `from` to `to` (the slot's
// confirmed_flush_lsn), which accepts that the changes committed in
// between never become events: the only way on once they can no longer be
// read (a lost or re-created slot, a failover). A cursor ahead of the
// server's WAL (a failover to a standby that was behind) moves back to the
// slot, and the id epoch is counted up from newFrom on (IDEpoch): the new
// history reuses the old one's xids and positions past the point where it
// began, newFrom. It moves the cursor only if it still is at from, so it
// never moves one a running walhook has advanced since; moved is false
// then.
func AcceptGap(ctx context.Context, pool *pgxpool.Pool, schema, slot string, from, to, newFrom cdc.LSN) (moved bool, err error) {
	if to == from {
		return false, fmt.Errorf("accept gap of slot %q: the cursor is at %s already", slot, to)
	}
	tag, err := pool.Exec(ctx, strings.ReplaceAll(
		`UPDATE {{schema}}.cursor SET lsn = $3::pg_lsn, fork_wal_end = NULL, updated_at = now(),
		    id_epoch = id_epoch + CASE WHEN $3::pg_lsn < $2::pg_lsn THEN 1 ELSE 0 END,
		    id_epoch_from = CASE WHEN $3::pg_lsn < $2::pg_lsn THEN $4::pg_lsn ELSE id_epoch_from END
		WHERE slot = $1 AND lsn = $2::pg_lsn`,
		"{{schema}}", quoteIdent(schema)), slot, from.String(), to.String(), newFrom.String())
	if err != nil {
		return false, fmt.Errorf("accept gap of slot %q: %w", slot, err)
	}
	return tag.RowsAffected() == 1, nil
}

// AcceptNewSystem takes slot's cursor, written while reading PostgreSQL
// system `from`, to system `to` at position lsn (the new slot's): the
// source database moved to another cluster (pg_upgrade, a dump and
// restore, a blue/green switchover), whose positions have nothing to do
// with the old one's. A fork recorded on the old system goes with it.
// The id epoch stays: event ids hash the system identifier, so the new
// system's transactions cannot take a stored event's id. moved is false
// when the cursor is no longer the old system's (another setup took it).
func AcceptNewSystem(ctx context.Context, pool *pgxpool.Pool, schema, slot, from, to string, lsn cdc.LSN) (moved bool, err error) {
	tag, err := pool.Exec(ctx, strings.ReplaceAll(
		`UPDATE {{schema}}.cursor SET system_id = $3, lsn = $4::pg_lsn, fork_wal_end = NULL, updated_at = now()
		WHERE slot = $1 AND system_id = $2`,
		"{{schema}}", quoteIdent(schema)), slot, from, to, lsn.String())
	if err != nil {
		return false, fmt.Errorf("accept the new system of slot %q: %w", slot, err)
	}
	return tag.RowsAffected() == 1, nil
}

// IDEpoch returns the id epoch of slot's cursor (0 before the first Append
// and until a fork is accepted) and the position from which it applies:
// the leader gives them to the mapper (mapper.SetIDEpoch) before it
// streams.
func (d *Dispatcher) IDEpoch(ctx context.Context, slot string) (epoch uint32, from cdc.LSN, err error) {
	var e int32
	var f *string
	err = d.pool.QueryRow(ctx, d.q(`SELECT id_epoch, id_epoch_from::text FROM {{schema}}.cursor WHERE slot = $1`), slot).Scan(&e, &f)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, nil
	}
	if err == nil && f != nil {
		from, err = pglogrepl.ParseLSN(*f)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read the id epoch of slot %q: %w", slot, err)
	}
	return uint32(e), from, nil
}

// HalfStoredLegacyTx returns the commit LSN of a transaction an older
// walhook stored only in part, under the unordered ids it gave events
// before ordered ones (mapper.EventID), and 0 when there is none. Such a
// transaction (several chunks, the process stopped half-way) is replayed
// whole, and its replay must give the chunks already stored the same ids
// (mapper.SetLegacyIDs), or their webhooks would go out again under new
// ones. Chunks are appended in commit order and only the last moves the
// cursor, so a half-stored transaction is the one the most recent append
// wrote, committed at or past the cursor. Read through events_created_at:
// one index entry, whatever the history.
func (d *Dispatcher) HalfStoredLegacyTx(ctx context.Context, slot string) (cdc.LSN, error) {
	var lsnText, id string
	err := d.pool.QueryRow(ctx, d.q(`SELECT commit_lsn::text, id FROM {{schema}}.events
		WHERE commit_lsn IS NOT NULL ORDER BY created_at DESC LIMIT 1`)).Scan(&lsnText, &id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the last stored event: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		return 0, fmt.Errorf("read the last stored event: %w", err)
	}
	if _, ordered := mapper.OrderedEventLSN(id); ordered {
		return 0, nil
	}
	cursor, _, ok, err := d.Cursor(ctx, slot)
	if err != nil {
		return 0, err
	}
	if ok && cdc.LSN(lsn) < cursor {
		return 0, nil // stored whole
	}
	return cdc.LSN(lsn), nil
}

// RecordFork remembers that slot's cursor was found past the source's WAL
// end walEnd (a fork of the source's history), so that check, setup and
// run keep refusing once the server's WAL has passed the cursor, until
// AcceptGap. The first record stays.
func RecordFork(ctx context.Context, pool *pgxpool.Pool, schema, slot string, walEnd cdc.LSN) error {
	_, err := pool.Exec(ctx, strings.ReplaceAll(
		`UPDATE {{schema}}.cursor SET fork_wal_end = $2::pg_lsn WHERE slot = $1 AND fork_wal_end IS NULL`,
		"{{schema}}", quoteIdent(schema)), slot, walEnd.String())
	if err != nil {
		return fmt.Errorf("record the fork of slot %q: %w", slot, err)
	}
	return nil
}

// StoredFork returns the WAL end recorded by RecordFork for slot, ok false
// when none is pending.
func StoredFork(ctx context.Context, pool *pgxpool.Pool, schema, slot string) (walEnd cdc.LSN, ok bool, err error) {
	var s *string
	err = pool.QueryRow(ctx, strings.ReplaceAll(`SELECT fork_wal_end::text FROM {{schema}}.cursor WHERE slot = $1`,
		"{{schema}}", quoteIdent(schema)), slot).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && s == nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read the fork of slot %q: %w", slot, err)
	}
	walEnd, err = pglogrepl.ParseLSN(*s)
	if err != nil {
		return 0, false, fmt.Errorf("read the fork of slot %q: %w", slot, err)
	}
	return walEnd, true, nil
}

// ErrNoCursor: the store holds no cursor for the slot (walhook run has
// stored nothing for it yet).
var ErrNoCursor = errors.New("the store holds no cursor for the slot")

// CursorNotBehindError: SkipCursor was asked for a position the cursor
// has reached already.
type CursorNotBehindError struct {
	Slot   string
	Cursor cdc.LSN
}

func (e *CursorNotBehindError) Error() string {
	return fmt.Sprintf("the cursor for slot %s is already at %s", e.Slot, e.Cursor)
}

// SkipCursor moves slot's cursor forward to `to` and returns where it was.
// walhook run starts replication from the cursor, and PostgreSQL skips
// every transaction whose commit record lies before the start position
// (SnapBuildXactNeedsSkip), so the transactions that committed between
// the two are never decoded again: walhook setup --skip-to, the way past
// a transaction no rule can map. It moves only forward: the row is locked
// while it is compared, and the update keeps GREATEST as Append does, so
// a cursor an Append advanced meanwhile never goes back; one at or past
// `to` is a *CursorNotBehindError. A pending fork (RecordFork) is left
// for AcceptGap.
func SkipCursor(ctx context.Context, pool *pgxpool.Pool, schema, slot string, to cdc.LSN) (from cdc.LSN, err error) {
	q := func(sql string) string { return strings.ReplaceAll(sql, "{{schema}}", quoteIdent(schema)) }
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var s string
		err := tx.QueryRow(ctx, q(`SELECT lsn::text FROM {{schema}}.cursor WHERE slot = $1 FOR UPDATE`), slot).Scan(&s)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNoCursor
		}
		if err != nil {
			return err
		}
		if from, err = pglogrepl.ParseLSN(s); err != nil {
			return err
		}
		if from >= to {
			return &CursorNotBehindError{Slot: slot, Cursor: from}
		}
		_, err = tx.Exec(ctx, q(`UPDATE {{schema}}.cursor SET lsn = GREATEST(lsn, $2::pg_lsn), updated_at = now()
			WHERE slot = $1`), slot, to.String())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("skip the cursor of slot %q to %s: %w", slot, to, err)
	}
	return from, nil
}

// OtherSlots returns the slots other than slot that the store holds a
// cursor for, in name order: another walhook config (another source or
// slot) stores into this store schema. Each config's run makes the
// store's static endpoints its own (deleting the other's, with their
// deliveries) and fans its events out to every endpoint in the store, so
// one store schema serves one slot.
//
// A schema that is no store (yet: no schema_version and cursor tables)
// holds none, so setup can ask before it migrates.
func OtherSlots(ctx context.Context, pool *pgxpool.Pool, schema, slot string) ([]string, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL`,
		quoteIdent(schema)+".schema_version", quoteIdent(schema)+".cursor").Scan(&exists); err != nil {
		return nil, fmt.Errorf("read the cursors of store schema %q: %w", schema, err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := pool.Query(ctx, strings.ReplaceAll(`SELECT slot FROM {{schema}}.cursor WHERE slot <> $1 ORDER BY slot`,
		"{{schema}}", quoteIdent(schema)), slot)
	if err != nil {
		return nil, fmt.Errorf("read the cursors of store schema %q: %w", schema, err)
	}
	slots, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read the cursors of store schema %q: %w", schema, err)
	}
	return slots, nil
}

// SharedStoreError is a store schema that holds the cursor of another
// slot than the config's (OtherSlots).
type SharedStoreError struct {
	Schema, Slot string
	Others       []string
}

func (e *SharedStoreError) Error() string {
	return fmt.Sprintf("store schema %s holds the cursor of slot %s, not only this config's slot %q: %s; nothing was changed — fix: %s",
		e.Schema, strings.Join(e.Others, ", "), e.Slot, e.Why(), e.Fix())
}

// Why says what sharing a store schema does.
func (e *SharedStoreError) Why() string {
	return "another walhook config (another source or slot) uses this store schema, and two configs sharing one would " +
		"each replace the other's static endpoints (deleting them with their deliveries) and deliver their events to " +
		"each other's endpoints"
}

// Fix says what to do about it.
func (e *SharedStoreError) Fix() string {
	q := make([]string, len(e.Others))
	for i, s := range e.Others {
		q[i] = "'" + strings.ReplaceAll(s, "'", "''") + "'"
	}
	return fmt.Sprintf("give this config its own store.schema (walhook setup creates it); if no walhook uses slot %s any "+
		"more, delete its cursor: DELETE FROM %s.cursor WHERE slot IN (%s);",
		strings.Join(e.Others, ", "), quoteIdent(e.Schema), strings.Join(q, ", "))
}

// RefuseSharedStore returns a *SharedStoreError when the store schema holds
// the cursor of a slot other than slot.
func RefuseSharedStore(ctx context.Context, pool *pgxpool.Pool, schema, slot string) error {
	others, err := OtherSlots(ctx, pool, schema, slot)
	if err != nil {
		return err
	}
	if len(others) > 0 {
		return &SharedStoreError{Schema: schema, Slot: slot, Others: others}
	}
	return nil
}
