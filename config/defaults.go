package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Default values, exported so docs, tests and other packages agree.
const (
	DefaultPublication       = "walhook"
	DefaultSlot              = "walhook"
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultStatusInterval    = 10 * time.Second
	DefaultMaxChunkChanges   = 10000
	DefaultStoreSchema       = "walhook"
	DefaultEnvelope          = EnvelopeAuctionExcellence
	DefaultJitter            = 0.1
	DefaultRetryAfterCap     = time.Hour
	DefaultTimeout           = 30 * time.Second
	DefaultWorkers           = 32
	DefaultMaxInFlight       = 8
	DefaultBatchSize         = 64
	DefaultPollInterval      = time.Second
	DefaultMaxResponseBody   = 1024
	DefaultRetention         = 168 * time.Hour
	DefaultDisableWindow     = 24 * time.Hour
	DefaultMinFailed         = 3
	DefaultSecretOverlap     = 24 * time.Hour
	DefaultListen            = "127.0.0.1:8080"
	DefaultWritePerMinute    = 60
	DefaultReadPerMinute     = 100
	DefaultCPUYield          = true
	DefaultEndpointMetrics   = true
	DefaultCPUMaxLag         = time.Minute
	DefaultLogLevel          = "info"
	DefaultLogFormat         = "text"

	// LeaseMargin is added to the delivery timeout for the default lease.
	LeaseMargin = 30 * time.Second
)

// Envelope styles.
const (
	EnvelopeAuctionExcellence = "auction-excellence"
	EnvelopeSNS               = "sns"
)

// DefaultRetrySchedule is seed 000's schedule: at once, then +1m, +5m,
// +30m, +2h, +12h.
func DefaultRetrySchedule() []Duration {
	return []Duration{0, Duration(time.Minute), Duration(5 * time.Minute),
		Duration(30 * time.Minute), Duration(2 * time.Hour), Duration(12 * time.Hour)}
}

// DefaultOpenPaths are served without an API key.
func DefaultOpenPaths() []string { return []string{"/healthz", "/readyz", "/metrics"} }

// applyDefaults fills every key that was not written. set holds the key
// paths present in the file, so an explicit zero is kept.
func applyDefaults(c *Config, set map[string]bool) {
	str := func(p *string, path, def string) {
		if !set[path] && *p == "" {
			*p = def
		}
	}
	dur := func(p *Duration, path string, def time.Duration) {
		if !set[path] {
			*p = Duration(def)
		}
	}
	num := func(p *int, path string, def int) {
		if !set[path] {
			*p = def
		}
	}

	str(&c.Source.Publication, "source.publication", DefaultPublication)
	str(&c.Source.Slot, "source.slot", DefaultSlot)
	dur(&c.Source.HeartbeatInterval, "source.heartbeat_interval", DefaultHeartbeatInterval)
	dur(&c.Source.StatusInterval, "source.status_interval", DefaultStatusInterval)
	num(&c.Source.MaxChunkChanges, "source.max_chunk_changes", DefaultMaxChunkChanges)

	if c.Store.DSN == "" {
		c.Store.DSN = c.Source.DSN
	}
	str(&c.Store.Schema, "store.schema", DefaultStoreSchema)

	str(&c.Mapping.Envelope, "mapping.envelope", DefaultEnvelope)
	for i := range c.Events {
		if c.Events[i].Envelope == "" {
			c.Events[i].Envelope = c.Mapping.Envelope
		}
	}

	dl := &c.Delivery
	if !set["delivery.retry_schedule"] {
		dl.RetrySchedule = DefaultRetrySchedule()
	}
	if !set["delivery.jitter"] {
		dl.Jitter = DefaultJitter
	}
	dur(&dl.RetryAfterCap, "delivery.retry_after_cap", DefaultRetryAfterCap)
	dur(&dl.Timeout, "delivery.timeout", DefaultTimeout)
	num(&dl.Workers, "delivery.workers", DefaultWorkers)
	num(&dl.MaxInFlightPerEndpoint, "delivery.max_in_flight_per_endpoint", DefaultMaxInFlight)
	num(&dl.BatchSize, "delivery.batch_size", DefaultBatchSize)
	dur(&dl.Lease, "delivery.lease", dl.Timeout.D()+LeaseMargin)
	dur(&dl.PollInterval, "delivery.poll_interval", DefaultPollInterval)
	num(&dl.MaxResponseBody, "delivery.max_response_body", DefaultMaxResponseBody)
	dur(&dl.Retention, "delivery.retention", DefaultRetention)
	dur(&dl.Disable.Window, "delivery.disable.window", DefaultDisableWindow)
	num(&dl.Disable.MinFailedDeliveries, "delivery.disable.min_failed_deliveries", DefaultMinFailed)
	dur(&dl.SecretOverlap, "delivery.secret_overlap", DefaultSecretOverlap)
	// UserAgent stays "" unless written: cmd/walhook fills in
	// "walhook/<version>", which this package does not know.

	str(&c.API.Listen, "api.listen", DefaultListen)
	if c.API.Listen == "off" {
		c.API.Listen = "" // one spelling for "disabled" downstream
	}
	if !set["api.open"] {
		c.API.Open = DefaultOpenPaths()
	}
	for i := range c.API.Keys {
		if c.API.Keys[i].Name == "" {
			c.API.Keys[i].Name = fmt.Sprintf("key%d", i+1)
		}
	}
	num(&c.API.RateLimits.WritePerMinute, "api.rate_limits.write_per_minute", DefaultWritePerMinute)
	num(&c.API.RateLimits.ReadPerMinute, "api.rate_limits.read_per_minute", DefaultReadPerMinute)

	if !set["cpu.yield"] {
		c.CPU.Yield = DefaultCPUYield
	}
	if !set["delivery.endpoint_metrics"] {
		c.Delivery.EndpointMetrics = DefaultEndpointMetrics
	}
	dur(&c.CPU.MaxLag, "cpu.max_lag", DefaultCPUMaxLag)

	str(&c.Log.Level, "log.level", DefaultLogLevel)
	str(&c.Log.Format, "log.format", DefaultLogFormat)
}

// DefaultConnectTimeout bounds each connection attempt to the source and
// the store whose DSN does not choose its own connect_timeout: without
// one, a server whose host froze (TCP still accepts, nothing answers)
// holds walhook's startup, check and setup for as long as it stays so.
const DefaultConnectTimeout = "10"

// BoundConnects gives the source and store DSNs connect_timeout =
// DefaultConnectTimeout and application_name = DefaultApplicationName
// where they do not set their own (walhook's commands call it after Load;
// the loaded config stays as written). The name lets a DBA tell walhook's
// sessions in pg_stat_activity from the application's.
func (c *Config) BoundConnects() {
	c.Source.DSN = withParam(withConnectTimeout(c.Source.DSN), "application_name", DefaultApplicationName, "PGAPPNAME")
	c.Store.DSN = withParam(withConnectTimeout(c.Store.DSN), "application_name", DefaultApplicationName, "PGAPPNAME")
}

// DefaultApplicationName is the application_name of walhook's sessions.
const DefaultApplicationName = "walhook"

// withConnectTimeout adds connect_timeout=DefaultConnectTimeout to dsn
// (URL or keyword/value form) unless it, or PGCONNECT_TIMEOUT, sets one.
// A DSN it cannot read is left for the connection to report.
func withConnectTimeout(dsn string) string {
	return withParam(dsn, "connect_timeout", DefaultConnectTimeout, "PGCONNECT_TIMEOUT")
}

// withParam adds key=value to dsn (URL or keyword/value form) unless dsn
// or the environment variable env sets it, or dsn names a service (whose
// file would then be overridden). A keyword/value DSN gets it in front:
// there a later setting wins, so the DSN's own keeps winning, and a last
// value left empty ("password=") cannot swallow it. A URL gets it as a
// query parameter unless its query has the key.
func withParam(dsn, key, value, env string) string {
	if os.Getenv(env) != "" || os.Getenv("PGSERVICE") != "" || strings.TrimSpace(dsn) == "" {
		return dsn // empty: validation says it is required
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		rest, query, hasQuery := strings.Cut(dsn, "?")
		if strings.Contains(dsn, "#") || urlQueryHas(query, key) || urlQueryHas(query, "service") {
			return dsn
		}
		if !hasQuery || query == "" {
			return rest + "?" + key + "=" + value
		}
		if strings.HasSuffix(dsn, "&") {
			return dsn + key + "=" + value
		}
		return dsn + "&" + key + "=" + value
	}
	if keywordDSNHas(dsn, "service") {
		return dsn
	}
	return key + "=" + value + " " + dsn
}

// urlQueryHas reports whether a URL's raw query sets key.
func urlQueryHas(query, key string) bool {
	for _, kv := range strings.Split(query, "&") {
		k, _, _ := strings.Cut(kv, "=")
		if u, err := url.QueryUnescape(k); err == nil && u == key {
			return true
		}
	}
	return false
}

// keywordDSNHas reports whether a keyword/value DSN sets key, reading it
// as libpq does: key = value pairs, a value in single quotes with
// backslash escapes, or up to the next space.
func keywordDSNHas(dsn, key string) bool {
	i := 0
	skip := func() {
		for i < len(dsn) && (dsn[i] == ' ' || dsn[i] == '\t' || dsn[i] == '\n' || dsn[i] == '\r') {
			i++
		}
	}
	for {
		skip()
		if i >= len(dsn) {
			return false
		}
		k := i
		for i < len(dsn) && dsn[i] != '=' && dsn[i] != ' ' && dsn[i] != '\t' && dsn[i] != '\n' {
			i++
		}
		name := dsn[k:i]
		skip()
		if i >= len(dsn) || dsn[i] != '=' {
			return false // not keyword/value as libpq reads it
		}
		i++
		skip()
		if name == key {
			return true
		}
		if i < len(dsn) && dsn[i] == '\'' {
			for i++; i < len(dsn) && dsn[i] != '\''; i++ {
				if dsn[i] == '\\' {
					i++
				}
			}
			i++
			continue
		}
		for i < len(dsn) && dsn[i] != ' ' && dsn[i] != '\t' && dsn[i] != '\n' {
			if dsn[i] == '\\' {
				i++
			}
			i++
		}
	}
}
