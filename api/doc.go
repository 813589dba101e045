// Package api serves walhook's admin and status HTTP API: the seed-004
// subscription routes (create, list, get, update, delete webhooks), a test
// send, the delivery history, redelivery, recovery and secret rotation, the
// event catalog, replication and outbox status, health, readiness and
// Prometheus metrics.
//
// It is a thin, strict layer over the store (dispatch.Admin): every request
// is authenticated by an X-API-Key compared in constant time against every
// configured key, rate-limited per key (writes and reads separately), and
// decoded strictly (unknown fields, wrong types, trailing data and bodies
// over 1 MiB are refused with a stable error code) before anything is
// changed, so a refused request never leaves a partial change behind.
//
// Responses use the seed's envelope: {success, data, timestamp} and
// {success: false, error: {code, message}, timestamp}; timestamps are unix
// seconds. docs/api.md lists every route and code.
//
// The package declares the small interfaces it needs (AdminStore,
// Replication) so cmd/walhook can mount it over the real store and the cdc
// stream, and tests can mount it over a store in a throwaway database.
package api
