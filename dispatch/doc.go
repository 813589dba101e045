// Package dispatch owns the outbox: the store schema and its migrations, the
// append that makes a transaction's events durable, and the workers that
// sign and deliver webhooks with retries.
//
// Why an outbox in PostgreSQL: the store is the only place where "the events
// of this transaction exist" and "cdc may confirm its LSN" can be made true
// together. Append writes events, their deliveries (one per event × matching
// endpoint) and the replication cursor in ONE transaction; cdc confirms only
// the cursor. Event and delivery ids are deterministic and inserted with
// ON CONFLICT DO NOTHING, so a replay after a crash adds nothing.
//
// Delivery (worker.go, deliver.go): a claim is one UPDATE … FROM (SELECT …
// FOR UPDATE SKIP LOCKED) that bumps the attempt and leases the row. It
// walks endpoints and takes each one's due rows up to its free in-flight
// slots in this process, so one slow or dead endpoint never fills the
// workers. A 2xx is handed to the recorder (record.go), which writes every
// success handed over since its last write in one transaction. Workers wake
// on LISTEN/NOTIFY (channel "<schema>_wake", sent inside Append's
// transaction so it arrives only after commit) and on an in-process signal,
// polling as a fallback. Several processes share a store: SKIP LOCKED keeps
// their claims apart, and a lease that outlives a crashed process is
// rescued back to pending (maintain.go) — the only source of duplicates,
// which carry the same webhook id.
//
// Each attempt is rendered from the stored event (json, bytes kept), signed
// at send time with the endpoint's secret (and the previous one during a
// rotation overlap), recorded in attempts, and the delivery moves to
// delivered, pending (RetryPolicy, Retry-After honoured; due times are
// written as the store's now() + delay so clocks of several hosts never
// disagree) or failed. 410 disables the endpoint at once; otherwise the
// disable rule needs both no 2xx for DisableWindow and DisableMinFailed
// exhausted deliveries within it, so a burst cannot trip it. A disabled
// endpoint's pending deliveries become skipped: kept, recoverable.
package dispatch
