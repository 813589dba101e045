// Package cdc turns a PostgreSQL logical replication slot into a stream of
// whole committed transactions, and confirms positions back to PostgreSQL
// only when the consumer says they are durable.
//
// Why it is built this way (each rule exists because a peer tool lost data
// or filled a disk without it):
//
//   - pgoutput, protocol version 1, with messages 'true'. The server decodes
//     a transaction only after it committed and Begin already carries the
//     commit LSN, so a large transaction can be handed over in chunks
//     (Options.MaxChunkChanges) that all know Xid, CommitLSN and CommitTime;
//     only the final chunk carries EndLSN. Memory stays bounded because the
//     Txs channel is bounded (Options.TxBuffer).
//   - One goroutine owns the replication connection (Stream.Run). It answers
//     keepalives and sends standby status updates at least every
//     StatusInterval, also while the consumer is slow and Txs is full.
//   - Only positions the consumer passed to Confirm are confirmed, as write,
//     flush and apply alike. Confirming a commit LSN would replay the
//     transaction; confirming a change's own LSN would skip data.
//   - When everything handed out is confirmed and nothing is being assembled,
//     the server's WAL end from a keepalive is handed out as a position
//     advance (a Final Tx without changes), and so is every heartbeat
//     transaction (pg_logical_emit_message, prefix "walhook."). The consumer
//     records and confirms them like any transaction, so an idle or filtered
//     database retains no WAL and cdc never confirms a position the store
//     does not have.
//   - Resuming: Run starts from the store's cursor. A cursor below the slot's
//     confirmed_flush_lsn means the store lost data (ErrCursorBehindSlot).
//     A missing slot, an invalidated slot (wal_status 'lost') and a missing
//     publication are permanent errors: a slot is never re-created silently.
//     A slot held by another process is waited for, never dropped.
//   - Reconnects use capped exponential backoff with jitter. The relation
//     cache belongs to the connection and is rebuilt after a reconnect; a
//     Relation message (sent again after DDL) always creates a new
//     *Relation, so consumers may cache per pointer.
//   - Values are decoded by type OID into JSON-ready kinds (see Value). The
//     session runs with DateStyle=ISO, IntervalStyle=postgres,
//     extra_float_digits=3 and TimeZone=UTC so text output is the same on
//     every server. Unchanged TOAST values are filled from the old row under
//     REPLICA IDENTITY FULL and are otherwise Unavailable, never null.
//
// Setup and Teardown create and remove the publication (only the tables the
// rules use) and the permanent pgoutput slot, publication first.
package cdc
