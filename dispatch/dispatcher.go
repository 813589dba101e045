package dispatch

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/lograte"
	"github.com/walhook/walhook/mapper"
)

// Options configure a Dispatcher. Zero values take the defaults named on
// each field (the config package's defaults, repeated so tests and other
// callers get the same behaviour).
type Options struct {
	// Schema is the store schema (unquoted name). Default "walhook".
	Schema string
	// InstanceID names this process in locked_by. Default host-pid-random.
	InstanceID string
	Logger     *slog.Logger
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// NoEndpointMetrics counts walhook_delivery_attempts_total by outcome
	// only, without the endpoint label (a series per endpoint and
	// outcome: thousands with thousands of endpoints).
	NoEndpointMetrics bool
	// Now is the clock for retry decisions. Default time.Now. Times stored
	// in the store come from PostgreSQL's now(), and the retry delay is
	// written as now() + delay, so clock skew between walhook processes
	// sharing a store does not move due times.
	Now func() time.Time

	Client ClientOptions
	Retry  RetryPolicy

	// Workers is the number of concurrent requests. Default 32.
	Workers int
	// MaxInFlightPerEndpoint caps this process's requests in flight per
	// endpoint, so one slow endpoint cannot hold every worker. Each
	// process sharing a store has its own cap. Default 8.
	MaxInFlightPerEndpoint int
	// BatchSize is the most deliveries claimed by one statement. Default 64.
	BatchSize int
	// Lease is how long a claim lasts before another process may rescue
	// it. Default Client.Timeout (30s when zero) + 30s.
	Lease time.Duration
	// PollInterval is the fallback poll when no notification arrives.
	// Default 1s.
	PollInterval time.Duration
	// Retention keeps finished deliveries, their attempts and their events
	// this long. Default 168h; negative keeps everything.
	Retention time.Duration

	// DisableWindow and DisableMinFailed: an endpoint is disabled when it
	// has had no 2xx for DisableWindow and at least DisableMinFailed of its
	// deliveries exhausted their retries within that window. Defaults 24h
	// and 3. DisableNever turns the rule off (410 still disables).
	DisableWindow    time.Duration
	DisableMinFailed int
	DisableNever     bool

	// SecretOverlap is how long a rotated secret keeps signing. Default 24h.
	// Rotation itself is the admin API's; the dispatcher signs with the
	// previous secret while endpoints.previous_secret_until is in the future.
	SecretOverlap time.Duration

	// Envelope is the body shape of test sends (SendTest). Default
	// auction-excellence.
	Envelope mapper.Envelope

	// insertBytes bounds the text of one events INSERT of an Append
	// (default defaultInsertBytes; tests set it small).
	insertBytes int
}

// defaultInsertBytes bounds the event text (bodies and data) one INSERT
// carries: PostgreSQL takes no value, and pgx no message, over 1 GB, and
// one transaction of large rows can bring more than that.
const defaultInsertBytes = 64 << 20

const (
	defaultSchema           = "walhook"
	defaultWorkers          = 32
	defaultMaxInFlight      = 8
	defaultBatchSize        = 64
	defaultPollInterval     = time.Second
	defaultRetention        = 7 * 24 * time.Hour
	defaultDisableWindow    = 24 * time.Hour
	defaultDisableMinFailed = 3
	defaultSecretOverlap    = 24 * time.Hour
	defaultAttemptTimeout   = 30 * time.Second
)

func (o *Options) setDefaults() {
	if o.insertBytes <= 0 {
		o.insertBytes = defaultInsertBytes
	}
	if o.Schema == "" {
		o.Schema = defaultSchema
	}
	if o.InstanceID == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		o.InstanceID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Workers <= 0 {
		o.Workers = defaultWorkers
	}
	if o.MaxInFlightPerEndpoint <= 0 {
		o.MaxInFlightPerEndpoint = defaultMaxInFlight
	}
	if o.BatchSize <= 0 {
		o.BatchSize = defaultBatchSize
	}
	if o.Client.Timeout <= 0 {
		o.Client.Timeout = defaultAttemptTimeout
	}
	if o.Lease <= 0 {
		o.Lease = o.Client.Timeout + 30*time.Second
	}
	if o.PollInterval <= 0 {
		o.PollInterval = defaultPollInterval
	}
	if o.Retention == 0 {
		o.Retention = defaultRetention
	}
	if o.DisableWindow <= 0 {
		o.DisableWindow = defaultDisableWindow
	}
	if o.DisableMinFailed <= 0 {
		o.DisableMinFailed = defaultDisableMinFailed
	}
	if o.SecretOverlap <= 0 {
		o.SecretOverlap = defaultSecretOverlap
	}
	if o.Envelope == "" {
		o.Envelope = mapper.EnvelopeAuctionExcellence
	}
}

// Dispatcher is the outbox: Append makes events durable and fans them out,
// Run delivers them. Several Dispatchers (in one or many processes) may
// share one store; each delivery is claimed by one of them at a time.
type Dispatcher struct {
	pool    *pgxpool.Pool
	opts    Options
	log     *slog.Logger
	client  *Client
	metrics *metrics
	schema  string // quoted identifier
	// channel is the LISTEN/NOTIFY channel, derived from the schema so two
	// stores in one database do not wake each other.
	channel string
	// wake is the in-process signal: Append and Notify send without
	// blocking, the claim loop drains it.
	wake chan struct{}
	// hold counts what the claim loop holds and takes Append's handoffs.
	hold inflight
	// disabled: endpoint id → when this process disabled it.
	disabled sync.Map
	notes    atomic.Uint64 // noteDisabled and noteChanged calls, for pruning
	// changed: endpoint id → when its URL or secret changed (noteChanged);
	// relisten: when the LISTEN connection was last made again (Unix ns,
	// 0 for the first), see changedSince.
	changed  sync.Map
	relisten atomic.Int64
	listened atomic.Bool
	// logLimit keeps problems that repeat (an endpoint's failures, a
	// store outage) to one line a minute.
	logLimit *lograte.Limiter
	// afterStaticRead, when set (tests), runs after a static sync read
	// the static endpoints, before it locks them.
	afterStaticRead func()
	// claims counts the claim statements run (tests).
	claims atomic.Int64
	// secrets caches decoded signing keys by secret.
	secrets secretCache
	// endpoints is the fan-out's copy of the endpoints.
	endpoints endpointCache
	// eventSweep is the maintenance loop's place in the events past
	// retention (deleteExpired).
	eventSweep eventSweep
	// unrecorded: delivery id → the lease of a claim whose attempt was
	// made but whose outcome could not be written (the store failed).
	// Run's release at stop keeps their attempt counted.
	unrecorded sync.Map
	// kept: slot → the lowest position Append may find the slot's cursor
	// at (ExpectCursor, and what this process's Appends stored since).
	keptMu sync.Mutex
	kept   map[string]cdc.LSN
}

// New returns a Dispatcher over the store in opts.Schema. It does not
// check the schema (CheckSchema does) and starts nothing (Run does).
func New(pool *pgxpool.Pool, opts Options) (*Dispatcher, error) {
	if pool == nil {
		return nil, errors.New("dispatch: nil pool")
	}
	opts.setDefaults()
	client, err := NewClient(opts.Client)
	if err != nil {
		return nil, fmt.Errorf("dispatch: http client: %w", err)
	}
	m, err := newMetrics(opts.Registerer, !opts.NoEndpointMetrics)
	if err != nil {
		return nil, fmt.Errorf("dispatch: metrics: %w", err)
	}
	return &Dispatcher{
		pool:    pool,
		opts:    opts,
		log:     opts.Logger,
		client:  client,
		metrics: m,
		schema:  quoteIdent(opts.Schema),
		channel: wakeChannel(opts.Schema), logLimit: lograte.New(time.Minute),
		wake: make(chan struct{}, 1),
	}, nil
}

// wakeChannel is the LISTEN/NOTIFY channel of a store schema: schema +
// "_wake", or, when that is longer than PostgreSQL's 63-byte names (where
// pg_notify refuses it), a name made from the schema's hash.
func wakeChannel(schema string) string {
	if c := schema + "_wake"; len(c) <= 63 {
		return c
	}
	h := sha256.Sum256([]byte(schema))
	return "walhook_" + hex.EncodeToString(h[:12]) + "_wake"
}

// q replaces {{schema}} with the quoted schema name.
func (d *Dispatcher) q(sql string) string { return strings.ReplaceAll(sql, "{{schema}}", d.schema) }

// Notify wakes this process's workers (after a redeliver or recover). Other
// processes find the work at their next poll or notification.
func (d *Dispatcher) Notify() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// ValidateURL checks raw against the delivery client's policy (scheme,
// literal addresses, allowlist) without dialling; the API uses it so an
// endpoint is refused at creation rather than failing at every attempt.
func (d *Dispatcher) ValidateURL(raw string) error { return d.client.ValidateURL(raw) }

// Schema returns the store schema name (unquoted).
func (d *Dispatcher) Schema() string { return d.opts.Schema }
