package config

import "time"

// Config is the whole walhook configuration. Field names are fixed: other
// packages' option conversions in cmd/walhook read them.
type Config struct {
	// File is the path the config was loaded from (for messages).
	File string `yaml:"-"`

	Source    Source     `yaml:"source"`
	Store     Store      `yaml:"store"`
	Mapping   Mapping    `yaml:"mapping"`
	Events    []Rule     `yaml:"events"`
	Endpoints []Endpoint `yaml:"endpoints"`
	Delivery  Delivery   `yaml:"delivery"`
	API       API        `yaml:"api"`
	CPU       CPU        `yaml:"cpu"`
	Log       Log        `yaml:"log"`
}

// Source is the database walhook reads changes from.
type Source struct {
	DSN         string `yaml:"dsn"`         // required
	Publication string `yaml:"publication"` // default "walhook"
	Slot        string `yaml:"slot"`        // default "walhook"
	// HeartbeatInterval: how often pg_logical_emit_message is written so the
	// slot advances while published tables are idle. Default 5s; 0 disables.
	HeartbeatInterval Duration `yaml:"heartbeat_interval"`
	// StatusInterval: the longest gap between standby status updates.
	// Default 10s, at most the server's wal_sender_timeout / 2.
	StatusInterval Duration `yaml:"status_interval"`
	// MaxChunkChanges: a transaction is handed on in chunks of at most this
	// many changes (bounded memory for huge transactions). Default 10000.
	MaxChunkChanges int `yaml:"max_chunk_changes"`
	// DSNPos is where dsn is written, for messages about it.
	DSNPos Pos `yaml:"-"`
}

// Store is where the outbox lives.
type Store struct {
	DSN    string `yaml:"dsn"`    // default: Source.DSN
	Schema string `yaml:"schema"` // default "walhook"
	// DSNPos is where dsn is written (zero when it defaults to Source.DSN).
	DSNPos Pos `yaml:"-"`
}

// Mapping holds defaults for every rule.
type Mapping struct {
	// Envelope: "auction-excellence" (default) or "sns".
	Envelope string `yaml:"envelope"`
	// Domain: a constant for the sns envelope's domain when rules name none.
	Domain string `yaml:"domain"`
}

// Rule maps changes of one table to one event type.
type Rule struct {
	// Event is the event type, e.g. "problem.status_changed".
	Event string `yaml:"event"`
	// Description is shown in the event catalog.
	Description string `yaml:"description"`
	// Table is "schema.table" or "table" (schema public).
	Table string `yaml:"table"`
	// Operations: any of insert, update, delete. Required.
	Operations []string `yaml:"operations"`
	// Changed: for updates, fire only when at least one of these columns'
	// value differs between old and new row (compared by value). Needs the
	// old row: REPLICA IDENTITY FULL.
	Changed []string `yaml:"changed"`
	// When: an optional boolean expression over `old` and `new` (maps of
	// column name to value; old is nil for inserts, new is nil for deletes),
	// e.g. `old.deleted_at == nil && new.deleted_at != nil`.
	When string `yaml:"when"`
	// AuctionID: the column that holds the auction id (default "auction_id"
	// when the table has one). Form: "column", "new.column" or "old.column".
	AuctionID string `yaml:"auction_id"`
	// Domain: the column holding the sns envelope's domain (sns only).
	Domain string `yaml:"domain"`
	// Envelope overrides Mapping.Envelope for this rule.
	Envelope string `yaml:"envelope"`
	// Data shapes the event's data object, in this order. Empty: the whole
	// row (new row; the old row for deletes).
	Data []DataField `yaml:"data"`

	// Pos is where the rule starts in the file, for error messages.
	Pos Pos `yaml:"-"`
	// WhenPos is where its when: value is written (zero without one).
	WhenPos Pos `yaml:"-"`
}

// DataField is one key of an event's data object. In YAML it is written as a
// one-key mapping or a bare column name:
//
//	data:
//	  - id                       # key "id" = new.id (old.id for deletes)
//	  - problemId: id            # renamed column
//	  - previousStatus: old.status
//	  - status: new.status
//	  - source: {const: "walhook"}   # a constant (any YAML value)
type DataField struct {
	Key string
	// Column is the column name; From is "new", "old" or "" (new, or old
	// for deletes).
	Column string
	From   string
	// Const is set (IsConst) for constants.
	IsConst bool
	Const   any

	Pos Pos
}

// Endpoint is a static webhook endpoint from the config. Static endpoints
// are read-only in the admin API.
type Endpoint struct {
	// ID is a stable name, unique; the store id is "static:" + ID.
	ID          string `yaml:"id"`
	URL         string `yaml:"url"`
	Secret      string `yaml:"secret"` // whsec_…; required for static endpoints
	Description string `yaml:"description"`
	// Events: exact types or "prefix.*"; empty means all.
	Events []string `yaml:"events"`
	// Auctions: only events of these auction ids; empty means all.
	Auctions []string `yaml:"auctions"`
	// Disabled endpoints are kept but receive nothing (deliveries skipped).
	Disabled bool `yaml:"disabled"`

	Pos Pos `yaml:"-"`
}

// Delivery controls the workers and the HTTP client.
type Delivery struct {
	// RetrySchedule: delay before each attempt, counted from the end of
	// the attempt before; the first must be 0 (the first attempt is made at
	// once).
	// Default [0s, 1m, 5m, 30m, 2h, 12h] (seed 000). Its length is the
	// number of attempts.
	RetrySchedule []Duration `yaml:"retry_schedule"`
	// Jitter: up to this fraction of the delay added (never subtracted).
	// Default 0.1.
	Jitter float64 `yaml:"jitter"`
	// RetryAfterCap: the longest Retry-After honoured. Default 1h.
	RetryAfterCap          Duration    `yaml:"retry_after_cap"`
	Timeout                Duration    `yaml:"timeout"`                    // per attempt, default 30s
	Workers                int         `yaml:"workers"`                    // concurrent requests, default 32
	MaxInFlightPerEndpoint int         `yaml:"max_in_flight_per_endpoint"` // default 8
	BatchSize              int         `yaml:"batch_size"`                 // claim batch, default 64
	Lease                  Duration    `yaml:"lease"`                      // claimed-by-crashed rescue, default Timeout+30s
	PollInterval           Duration    `yaml:"poll_interval"`              // fallback poll, default 1s
	UserAgent              string      `yaml:"user_agent"`                 // default "walhook/<version>"
	MaxResponseBody        int         `yaml:"max_response_body"`          // bytes kept, default 1024
	Retention              Duration    `yaml:"retention"`                  // delivered rows kept, default 168h
	Disable                DisableRule `yaml:"disable"`
	// AllowHTTP permits http:// URLs (development only).
	AllowHTTP bool `yaml:"allow_http"`
	// Allow lists CIDRs ("10.0.0.0/8") and host names ("hooks.internal")
	// that may be dialled although private; http:// is allowed to them.
	Allow []string `yaml:"allow"`
	// SecretOverlap: how long an old secret keeps signing after rotation.
	// Default 24h.
	SecretOverlap Duration `yaml:"secret_overlap"`
	// EndpointMetrics: walhook_delivery_attempts_total has an endpoint
	// label (a series per endpoint and outcome). Default true; false
	// counts by outcome only, for thousands of endpoints.
	EndpointMetrics bool `yaml:"endpoint_metrics"`
}

// DisableRule: an endpoint is disabled when it has had no 2xx for Window
// and at least MinFailedDeliveries deliveries have exhausted their retries
// in that time. 410 Gone disables at once.
type DisableRule struct {
	Window              Duration `yaml:"window"`                // default 24h
	MinFailedDeliveries int      `yaml:"min_failed_deliveries"` // default 3
	Never               bool     `yaml:"never"`
}

// API is the admin and status HTTP API.
type API struct {
	Listen string   `yaml:"listen"` // default "127.0.0.1:8080"; "" or "off" disables
	Keys   []APIKey `yaml:"keys"`
	// Open lists paths served without a key. Default
	// [/healthz, /readyz, /metrics].
	Open       []string   `yaml:"open"`
	RateLimits RateLimits `yaml:"rate_limits"`
}

// APIKey is one admin key. In YAML either a bare string or {name, key}.
type APIKey struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

// RateLimits are per key, per minute.
type RateLimits struct {
	WritePerMinute int `yaml:"write_per_minute"` // default 60
	ReadPerMinute  int `yaml:"read_per_minute"`  // default 100
}

// CPU is how walhook shares the CPUs with the database and the
// application on the same machine.
type CPU struct {
	// Yield: run at SCHED_IDLE priority while the CPUs are busy and walhook
	// is less than MaxLag behind (Linux; needs the right to come back).
	// Default true.
	Yield bool `yaml:"yield"`
	// MaxLag: how far behind the source walhook may fall while yielding.
	// Default 1m; positive.
	MaxLag Duration `yaml:"max_lag"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // text (default) or json
}

// Pos is a place in a config file.
type Pos struct {
	File   string
	Line   int
	Column int
}

// Duration is a time.Duration written as a Go duration string ("1m", "12h").
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
