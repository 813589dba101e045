package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SlotStatus is what the API and the logs show about replication: the
// slot's row in pg_replication_slots plus what the stream knows in memory.
type SlotStatus struct {
	Slot      string
	Active    bool
	ActivePID int
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved or lost.
	WALStatus         string
	RestartLSN        LSN
	ConfirmedFlushLSN LSN
	// RetainedBytes is the WAL the slot keeps on disk
	// (pg_current_wal_lsn() - restart_lsn).
	RetainedBytes int64
	// LagBytes is pg_current_wal_lsn() - confirmed_flush_lsn.
	LagBytes int64
	// WALEnd is pg_current_wal_lsn() when the slot was read.
	WALEnd LSN
	// LagSeconds is 0 when nothing is unconfirmed, otherwise the time since
	// the stream was last up to date: its last new confirmation, or the
	// last keepalive that found nothing sent unconfirmed (before either,
	// since the stream started).
	LagSeconds    float64
	LastMessageAt time.Time
	LastConfirmAt time.Time
	Reconnects    int64
	// State is the stream's: connecting, streaming, waiting_for_slot,
	// error or stopped.
	State     string
	LastError string
}

// querySlot reads the slot's row and classifies a missing, foreign or lost
// slot as the matching sentinel error.
func querySlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotStatus, error) {
	st := SlotStatus{Slot: slot}
	var (
		plugin, walStatus, db *string
		pid                   *int32
		restart, confirmed    *string
		walEnd                string
		retained, lag         *int64
		sameDB                bool
	)
	err := conn.QueryRow(ctx, `
		SELECT plugin, database, coalesce(database = current_database(), false), active, active_pid, wal_status,
		       restart_lsn::text, confirmed_flush_lsn::text,
		       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8,
		       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
		       pg_current_wal_lsn()::text
		FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&plugin, &db, &sameDB, &st.Active, &pid, &walStatus, &restart, &confirmed, &retained, &lag, &walEnd)
	if errors.Is(err, pgx.ErrNoRows) {
		if err := RefuseStandby(ctx, conn); err != nil { // a standby lists none of the primary's slots
			return st, err
		}
		return st, fmt.Errorf("%w: slot %q (dropped, or never created: run `walhook setup`; re-creating it "+
			"would skip every change made since it went missing)", ErrSlotMissing, slot)
	}
	if err != nil {
		return st, fmt.Errorf("look up replication slot %q: %w", slot, err)
	}
	if db == nil {
		return st, fmt.Errorf("%w: slot %q is a physical slot (a standby's), not a logical slot — fix: choose another source.slot "+
			"and run walhook setup", ErrSlotMissing, slot)
	}
	if !sameDB {
		return st, fmt.Errorf("%w: slot %q is a logical slot of database %q, not of this one — fix: choose another source.slot "+
			"and run walhook setup", ErrSlotMissing, slot, *db)
	}
	if plugin != nil && *plugin != "pgoutput" {
		return st, fmt.Errorf("%w: slot %q uses plugin %q, walhook needs pgoutput", ErrSlotMissing, slot, *plugin)
	}
	if pid != nil {
		st.ActivePID = int(*pid)
	}
	if walStatus != nil {
		st.WALStatus = *walStatus
	}
	if restart != nil {
		st.RestartLSN, _ = pglogrepl.ParseLSN(*restart)
	}
	if confirmed != nil {
		st.ConfirmedFlushLSN, _ = pglogrepl.ParseLSN(*confirmed)
	}
	st.WALEnd, _ = pglogrepl.ParseLSN(walEnd)
	if retained != nil {
		st.RetainedBytes = *retained
	}
	if lag != nil {
		st.LagBytes = *lag
	}
	if st.WALStatus == "lost" {
		return st, fmt.Errorf("%w: slot %q: PostgreSQL removed WAL it still needed (max_slot_wal_keep_size "+
			"exceeded); changes since %s are lost: run walhook teardown, then walhook setup --accept-gap, and backfill what matters",
			ErrSlotLost, slot, st.ConfirmedFlushLSN)
	}
	return st, nil
}

// Status reports the slot (queried on a normal connection) and the stream's
// in-memory facts. When the database is unreachable it still returns the
// in-memory part, with the error.
//
// The query runs on one connection the stream keeps for it (CloseStatus
// closes it), not a new one per call: /metrics scrapes and status reads
// would each open a session, with a login and log lines on the server.
// Calls take turns on it.
func (s *Stream) Status(ctx context.Context) (SlotStatus, error) {
	st := SlotStatus{Slot: s.opts.Slot}
	var err error
	select {
	case s.statusTurn <- struct{}{}:
		if s.statusConn == nil || s.statusConn.IsClosed() {
			s.statusConn = nil
			var conn *pgx.Conn
			if conn, err = pgx.ConnectConfig(ctx, s.sqlCfg); err != nil {
				err = fmt.Errorf("connect: %w", err)
			} else {
				s.statusConn = conn
			}
		}
		if s.statusConn != nil {
			st, err = querySlot(ctx, s.statusConn, s.opts.Slot)
			if s.statusClosed || (err != nil && !errors.Is(err, ErrSlotLost) && !errors.Is(err, ErrSlotMissing) && !errors.Is(err, ErrSourceStandby)) {
				// Made again by the next call; after CloseStatus (a call
				// that raced with it) none is kept.
				closeQuietly(s.statusConn)
				s.statusConn = nil
			}
		}
		<-s.statusTurn
	case <-ctx.Done():
		err = fmt.Errorf("connect: %w", ctx.Err())
	}
	s.mu.Lock()
	st.State, st.LastError = s.state, s.lastError
	s.mu.Unlock()
	st.Reconnects = s.reconnects.Load()
	if ns := s.lastMessageAt.Load(); ns != 0 {
		st.LastMessageAt = time.Unix(0, ns).UTC()
	}
	if ns := s.lastConfirmAt.Load(); ns != 0 {
		st.LastConfirmAt = time.Unix(0, ns).UTC()
	}
	if st.LagBytes > 0 {
		// Since the stream was last up to date (UpToDateAt); before
		// that, since Run started (a process waiting for the slot after
		// a kill -9 of the one before it has confirmed nothing, and is
		// behind all along).
		since := s.UpToDateAt()
		if since.IsZero() {
			if ns := s.runAt.Load(); ns != 0 {
				since = time.Unix(0, ns)
			}
		}
		if !since.IsZero() {
			st.LagSeconds = time.Since(since).Seconds()
		}
	}
	return st, err
}

// CloseStatus closes the connection Status keeps, once the stream is no
// longer asked (a leader term's stream when the term ends).
func (s *Stream) CloseStatus() {
	s.statusTurn <- struct{}{}
	s.statusClosed = true
	if s.statusConn != nil {
		closeQuietly(s.statusConn)
		s.statusConn = nil
	}
	<-s.statusTurn
}

// Reconnects is how many times this stream connected again after losing
// its connection.
func (s *Stream) Reconnects() int64 { return s.reconnects.Load() }

// Confirmed is the position the consumer last confirmed to this stream
// (what it may tell the server), 0 before the first.
func (s *Stream) Confirmed() LSN { return LSN(s.confirmed.Load()) }

// UpToDateAt is when this stream was last up to date with the server:
// the later of its last new confirmation and the last keepalive that
// found nothing sent unconfirmed (zero before either). WAL it has not
// confirmed since was written after then, and the lag in seconds counts
// from it: from the last confirmation alone, an idle source's first
// write after an hour showed an hour of lag.
func (s *Stream) UpToDateAt() time.Time {
	ns := max(s.lastConfirmAt.Load(), s.caughtUpAt.Load())
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// identify opens a replication connection to dsn for what, runs
// IDENTIFY_SYSTEM and returns both; the caller closes the connection.
func identify(ctx context.Context, dsn, what string) (*pgconn.PgConn, pglogrepl.IdentifySystemResult, error) {
	var id pglogrepl.IdentifySystemResult
	cfg, err := replicationConfig(dsn)
	if err != nil {
		return nil, id, err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, id, fmt.Errorf("connect for %s: %w", what, err)
	}
	if id, err = pglogrepl.IdentifySystem(ctx, conn); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, id, fmt.Errorf("identify system: %w", err)
	}
	return conn, id, nil
}

// SystemID returns the cluster's system identifier (IDENTIFY_SYSTEM), one
// input of deterministic event ids: the same xid and LSN on another cluster
// are another transaction.
func SystemID(ctx context.Context, dsn string) (string, error) {
	conn, id, err := identify(ctx, dsn, "IDENTIFY_SYSTEM")
	if err != nil {
		return "", err
	}
	conn.Close(context.WithoutCancel(ctx))
	return id.SystemID, nil
}

// TimelineSwitches returns the positions where the server's timeline
// history switched timelines, oldest first (TIMELINE_HISTORY of its
// current timeline; none on timeline 1), and the current timeline.
// Transactions committed at or past the last one are the server's own;
// those before a switch it shares with the servers it descends from.
func TimelineSwitches(ctx context.Context, dsn string) (switches []LSN, timeline int32, err error) {
	conn, id, err := identify(ctx, dsn, "TIMELINE_HISTORY")
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if id.Timeline <= 1 {
		return nil, id.Timeline, nil
	}
	h, err := pglogrepl.TimelineHistory(ctx, conn, id.Timeline)
	if err != nil {
		return nil, id.Timeline, fmt.Errorf("timeline history of timeline %d: %w", id.Timeline, err)
	}
	switches, err = timelineSwitches(h.Content)
	if err != nil {
		return nil, id.Timeline, fmt.Errorf("timeline history of timeline %d (%s): %w", id.Timeline, h.FileName, err)
	}
	return switches, id.Timeline, nil
}

// timelineSwitches returns the switch points of a timeline history file,
// in file order ("<parent timeline>\t<switch point>\t<reason>" per line;
// blank lines and # comments are skipped).
func timelineSwitches(content []byte) ([]LSN, error) {
	var out []LSN
	for _, line := range strings.Split(string(content), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		lsn, err := pglogrepl.ParseLSN(f[1])
		if err != nil {
			return nil, fmt.Errorf("malformed line %q: %w", line, err)
		}
		out = append(out, lsn)
	}
	if len(out) == 0 {
		return nil, errors.New("no switch point")
	}
	return out, nil
}
