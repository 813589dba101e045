package cdc

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// confirmGap rate-limits status updates caused by new confirmations: one per
// transaction would be a write per transaction at high rates.
const confirmGap = 100 * time.Millisecond

// periodic sends a standby status update when the consumer confirmed more
// since the last one (at most every confirmGap), or when StatusInterval has
// passed without one. When idle (nothing assembled, everything handed out
// confirmed) the periodic update asks the server to reply, so its keepalive
// brings the WAL end that becomes a position advance.
func (ss *session) periodic(now time.Time) error {
	since := now.Sub(ss.lastStatus)
	confirmed := ss.confirmable()
	switch {
	case confirmed > ss.sentConfirm && since >= confirmGap:
		return ss.sendStatus(false)
	case since >= ss.s.opts.StatusInterval:
		idle := ss.cur == nil && confirmed >= LSN(ss.s.handed.Load())
		return ss.sendStatus(idle)
	}
	return nil
}

// confirmable is what may be confirmed: what the consumer made durable,
// never past what was handed to it.
func (ss *session) confirmable() LSN {
	c, h := LSN(ss.s.confirmed.Load()), LSN(ss.s.handed.Load())
	if c > h {
		return h
	}
	return c
}

// sendStatus confirms the durable position. Write, flush and apply all
// carry it: PostgreSQL advances the slot's confirmed_flush_lsn from flush,
// and a higher write position would claim data we may not have. A dry
// run (Options.DryRun) confirms nothing: no flush position, and what was
// received as written.
func (ss *session) sendStatus(replyRequested bool) error {
	c := ss.confirmable()
	now := time.Now()
	write, flush := c, c
	if ss.s.opts.DryRun {
		write, flush = ss.walEnd, 0
	}
	err := ss.conn.Frontend().SendUnbufferedEncodedCopyData(statusUpdate(write, flush, now, replyRequested))
	if err != nil {
		return fmt.Errorf("send standby status update: %w", err)
	}
	ss.lastStatus = now
	if c > ss.sentConfirm {
		ss.sentConfirm = c
		ss.s.lastConfirmAt.Store(now.UnixNano())
	}
	return nil
}

// statusUpdate encodes a standby status update (a CopyData message) with
// flush as flush and apply position. pglogrepl.SendStandbyStatusUpdate
// is not used: it sends the write position as the flush position when
// flush is 0, which is how a dry run says it has flushed nothing, and
// PostgreSQL would move the slot to it.
func statusUpdate(write, flush LSN, now time.Time, replyRequested bool) []byte {
	b := make([]byte, 0, 39)
	b = append(b, 'd', 0, 0, 0, 38, pglogrepl.StandbyStatusUpdateByteID)
	b = binary.BigEndian.AppendUint64(b, uint64(write))
	b = binary.BigEndian.AppendUint64(b, uint64(flush))
	b = binary.BigEndian.AppendUint64(b, uint64(flush))
	b = binary.BigEndian.AppendUint64(b, uint64(now.Sub(pgEpoch).Microseconds()))
	if replyRequested {
		return append(b, 1)
	}
	return append(b, 0)
}
