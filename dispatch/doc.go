// Package dispatch owns the outbox: the store schema and its migrations, the
// append that makes a transaction's events durable, and the workers that
// sign and deliver webhooks with retries.
package dispatch
