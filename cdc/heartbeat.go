package cdc

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// heartbeat writes a transactional logical message every HeartbeatInterval
// on its own normal connection. pgoutput sends it (messages 'true') even
// when no published table changes, so the stream gets a transaction to hand
// out and confirm, and the slot advances instead of retaining WAL written
// for unpublished tables. The stream strips the message itself (prefix
// walhook.), so consumers see a Final Tx with no changes.
func (s *Stream) heartbeat(ctx context.Context) {
	t := time.NewTicker(s.opts.HeartbeatInterval)
	defer t.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeQuietly(conn)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			c, err := pgx.ConnectConfig(ctx, s.sqlCfg)
			if err != nil {
				s.log.Debug("heartbeat: connect failed", logKeyErr, err)
				continue
			}
			conn = c
		}
		qctx, cancel := context.WithTimeout(ctx, s.opts.HeartbeatInterval+5*time.Second)
		_, err := conn.Exec(qctx, `SELECT pg_logical_emit_message(true, 'walhook.heartbeat', '')`)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("heartbeat failed", logKeyErr, err)
			}
			closeQuietly(conn)
			conn = nil
		}
	}
}
