// Package mapper turns committed row changes into named business events.
//
// It is pure: a Mapper is compiled once from rules (Compile), checked
// against the source schema (CheckSchema, and again at run time against
// every Relation message pgoutput sends), and then maps transactions
// (Map) without any I/O. It never imports config: cmd/walhook converts the
// YAML rules into Rule values, so this package does not depend on the file
// format.
//
// Decisions users rely on:
//
//   - Old and new values are compared by value, never by "was the column in
//     the UPDATE": `SET status = status` produces no status_changed event.
//     pgoutput sends the whole new row, so the mapper compares it itself.
//   - Old values exist only when the table is REPLICA IDENTITY FULL (DEFAULT
//     sends the old key only when a key column changed). A rule that needs
//     them on another table is refused with the ALTER TABLE to run; an update
//     without an old row for such a rule is an error, never "changed".
//   - An unchanged TOAST value that PostgreSQL did not send (cdc marks it
//     Unavailable) is never rendered as null: the event that needs it is
//     skipped, logged with table and key, and counted in Stats.
//   - Event ids are deterministic from (system id, xid, commit LSN, position
//     of the change, rule index), so replaying a transaction after a crash
//     yields the same ids and the outbox stores nothing twice.
//
// Expressions (`when`) use github.com/expr-lang/expr: compiled and type
// checked once, evaluated on a reused VM with `old` and `new` maps that hold
// only the columns the expression reads. A when that fails stops the run
// (nothing is confirmed, so it fails again on every restart), so only the
// rule's own mistakes may fail: a failure on a nil (a NULL, a missing or
// null json key) is SQL's unknown, no match; numeric and float NaN and
// infinities are float64 and a timestamp's infinity a time, so they
// compare instead of failing as text.
package mapper
