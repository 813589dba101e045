package dispatch

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors of the admin store. The API maps each one to a stable error code.
var (
	// ErrNotFound: no endpoint or delivery with that id.
	ErrNotFound = errors.New("not found")
	// ErrStaticEndpoint: the endpoint comes from the config file and is
	// read-only through the API (edit the config and restart instead).
	ErrStaticEndpoint = errors.New("endpoint is static (defined in the config file) and read-only")
	// ErrEndpointInactive: the endpoint is disabled; re-enable it first.
	ErrEndpointInactive = errors.New("endpoint is disabled")
	// ErrDeliveryInFlight: a worker holds the delivery right now.
	ErrDeliveryInFlight = errors.New("delivery is being attempted right now")
	// ErrTestSend: a test send is not redelivered (it is never retried).
	ErrTestSend = errors.New("delivery is a test send, which is not redelivered: send a new test instead")
	// ErrInvalidURL wraps the reason a URL is refused (same policy as delivery).
	ErrInvalidURL = errors.New("invalid url")
	// ErrInvalidCursor: a pagination cursor that this store did not issue.
	ErrInvalidCursor = errors.New("invalid cursor")
)

// Endpoint is a webhook endpoint as the admin API shows it.
type Endpoint struct {
	ID          string
	URL         string
	Description string
	Events      []string // exact types or "prefix.*"; empty = all
	Auctions    []string // empty = all
	Active      bool
	// Static endpoints come from the config file and are read-only.
	Static bool
	// DisabledReason and DisabledAt are set while the endpoint is inactive.
	DisabledReason string
	DisabledAt     time.Time // zero when active
	// FailingSince is the first failure after the last 2xx (zero when healthy).
	FailingSince time.Time
	// LastDelivery is the time of the last 2xx (zero when never).
	LastDelivery  time.Time
	LastAttemptAt time.Time
	// PreviousSecretUntil: while in the future, the previous secret still
	// signs alongside the current one (secret rotation overlap).
	PreviousSecretUntil time.Time
	CreatedAt           time.Time
	UpdatedAt           time.Time
	// Secret is only filled by CreateEndpoint: it is shown once.
	Secret string
}

// EndpointInput creates an endpoint. URL and event filters are validated by
// the caller against the catalog; the URL against the delivery policy here.
type EndpointInput struct {
	URL         string
	Description string
	Events      []string
	Auctions    []string
	// Secret is generated when empty; otherwise it must be "whsec_" + base64.
	Secret string
}

// EndpointPatch changes an endpoint; nil fields are left as they are.
type EndpointPatch struct {
	URL         *string
	Description *string
	Events      *[]string
	Auctions    *[]string
	// Active true re-enables (clearing the disabled reason and the failing
	// state); false disables by admin and skips the pending deliveries.
	Active *bool
}

// ListOptions pages through a list. Cursor is opaque, from the previous page.
type ListOptions struct {
	Limit  int
	Cursor string
}

// DeliveryFilter selects an endpoint's deliveries. Zero values do not filter.
type DeliveryFilter struct {
	Status       string // pending, delivering, delivered, failed, skipped
	Since, Until time.Time
	Limit        int
	Cursor       string
}

// Delivery is one event × endpoint, with its latest outcome.
type Delivery struct {
	ID             string // the X-Webhook-ID
	EventID        string
	EndpointID     string
	EventType      string
	Status         string
	Attempts       int
	NextAttemptAt  time.Time
	LastStatusCode int // 0 when none
	LastError      string
	LastDuration   time.Duration
	CreatedAt      time.Time
	UpdatedAt      time.Time
	DeliveredAt    time.Time // zero until delivered
}

// Attempt is one row of the delivery log.
type Attempt struct {
	Attempt      int
	StartedAt    time.Time
	Duration     time.Duration
	StatusCode   int // 0 when no response
	Error        string
	ResponseBody string // bounded prefix
	Signatures   int
}

// DeliveryStatuses are the values of deliveries.status.
var DeliveryStatuses = []string{"pending", "delivering", "delivered", "failed", "skipped"}

const (
	// DefaultListLimit and MaxListLimit bound a page.
	DefaultListLimit = 50
	MaxListLimit     = 500
	// adminDisabledReason is recorded when an admin sets active=false.
	adminDisabledReason = "disabled by admin"
)

// Admin is the store side of the admin API: endpoint CRUD, delivery history,
// redelivery, recovery and secret rotation. Every change is one statement or
// one transaction, so a refused request changes nothing, and other walhook
// processes sharing the store see it at once (they read endpoints inside
// their fan-out transaction).
type Admin struct {
	pool   *pgxpool.Pool
	schema string // quoted identifier
	// d gives the URL policy of the delivery client, the wake-up of the
	// workers after a re-queue, and test sends.
	d *Dispatcher

	// The outbox counts of the last status request, reused while they
	// are younger than 20 times what they took (gaugeSpacing) if that
	// was statusReuseFrom or more: they cost in proportion to the
	// backlog, and a dashboard polling the status of a store with
	// millions pending would otherwise keep the store counting. One
	// count runs at a time, on a deadline of its own (statusCountTimeout):
	// concurrent requests share it, and one that gives up at its own
	// deadline leaves it running for the next (see outboxCounts).
	countsMu      sync.Mutex
	counts        OutboxStatus // without Endpoints; OldestPendingAge as of countsRefresh.at
	countsRefresh gaugeRefresh
	counting      *countRun // the count under way, or nil
	// life ends the count under way at Close.
	life context.Context
	stop context.CancelFunc
}

// countRun is one count of the outbox; done is closed once s and err are
// set.
type countRun struct {
	done chan struct{}
	s    OutboxStatus
	err  error
}

// NewAdmin returns the admin store over the outbox in schema (unquoted
// name), using d for URL checks, wake-ups and test sends.
func NewAdmin(pool *pgxpool.Pool, schema string, d *Dispatcher) *Admin {
	if schema == "" {
		schema = "walhook"
	}
	life, stop := context.WithCancel(context.Background())
	return &Admin{pool: pool, schema: pgx.Identifier{schema}.Sanitize(), d: d, life: life, stop: stop}
}

// Close ends a count of the outbox under way, which no request may be
// waiting for (see outboxCounts), so that the pool can close.
func (a *Admin) Close() { a.stop() }

// q replaces {{schema}} in a statement with the quoted schema name.
func (a *Admin) q(sql string) string { return strings.ReplaceAll(sql, "{{schema}}", a.schema) }

const endpointColumns = `id, url, description, events, auctions, active, static,
	coalesce(disabled_reason, ''), disabled_at, failing_since, last_success_at, last_attempt_at,
	previous_secret_until, created_at, updated_at`

func scanEndpoint(row pgx.Row) (Endpoint, error) {
	var e Endpoint
	var disabledAt, failingSince, lastSuccess, lastAttempt, prevUntil *time.Time
	err := row.Scan(&e.ID, &e.URL, &e.Description, &e.Events, &e.Auctions, &e.Active, &e.Static,
		&e.DisabledReason, &disabledAt, &failingSince, &lastSuccess, &lastAttempt,
		&prevUntil, &e.CreatedAt, &e.UpdatedAt)
	if err != nil {
		return Endpoint{}, err
	}
	e.DisabledAt = deref(disabledAt)
	e.FailingSince = deref(failingSince)
	e.LastDelivery = deref(lastSuccess)
	e.LastAttemptAt = deref(lastAttempt)
	e.PreviousSecretUntil = deref(prevUntil)
	if e.Events == nil {
		e.Events = []string{}
	}
	if e.Auctions == nil {
		e.Auctions = []string{}
	}
	return e, nil
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// newEndpointID returns "whk_" + 16 hex digits (64 random bits).
func newEndpointID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return "whk_" + hex.EncodeToString(b[:])
}

// checkSecret accepts what the signer accepts (DecodeSecret: "whsec_" +
// base64 of a key of sane length); its errors wrap ErrBadSecret.
func checkSecret(s string) error {
	_, err := DecodeSecret(s)
	return err
}

func (a *Admin) checkURL(raw string) error {
	if raw == "" {
		return fmt.Errorf("%w: url is required", ErrInvalidURL)
	}
	if err := a.d.ValidateURL(raw); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	return nil
}

// checkID refuses, as not found, an id PostgreSQL text cannot hold (NUL
// or invalid UTF-8: the query would fail with SQLSTATE 22021 rather than
// find nothing). Such an id names no row; ids arrive from request paths.
func checkID(kind, id string) error {
	if !isText(id) {
		return fmt.Errorf("%s %q: %w", kind, id, ErrNotFound)
	}
	return nil
}

// isText reports whether s can be a PostgreSQL text value (see
// storableText, which makes a response body one).
func isText(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// CreateEndpoint adds an API endpoint. The returned Endpoint carries the
// secret, which is never shown again.
func (a *Admin) CreateEndpoint(ctx context.Context, in EndpointInput) (Endpoint, error) {
	if err := a.checkURL(in.URL); err != nil {
		return Endpoint{}, err
	}
	secret := in.Secret
	if secret == "" {
		secret = NewSecret()
	} else if err := checkSecret(secret); err != nil {
		return Endpoint{}, err
	}
	row := a.pool.QueryRow(ctx, a.q(`
		INSERT INTO {{schema}}.endpoints (id, url, description, events, auctions, secret)
		VALUES ($1, $2, $3, $4, $5, $6)
		RETURNING `+endpointColumns),
		newEndpointID(), in.URL, in.Description, nonNil(in.Events), nonNil(in.Auctions), secret)
	e, err := scanEndpoint(row)
	if err != nil {
		return Endpoint{}, fmt.Errorf("create endpoint: %w", err)
	}
	e.Secret = secret
	return e, nil
}

// ListEndpoints pages through all endpoints, static ones included, oldest
// first, by keyset (created_at, id): a page costs the same however deep it
// is, and an endpoint created meanwhile is never shown twice.
func (a *Admin) ListEndpoints(ctx context.Context, o ListOptions) ([]Endpoint, string, int, error) {
	limit := clampLimit(o.Limit)
	after, afterID, err := decodeCursor(o.Cursor)
	if err != nil {
		return nil, "", 0, err
	}
	// Two statements, not one with ($1 IS NULL OR …): a generic plan
	// could not use that as an index condition, and a page deep in the
	// list would read every endpoint before it.
	var rows pgx.Rows
	if after == nil {
		rows, err = a.pool.Query(ctx, a.q(`SELECT `+endpointColumns+` FROM {{schema}}.endpoints
			ORDER BY created_at, id LIMIT $1`), limit+1)
	} else {
		rows, err = a.pool.Query(ctx, a.q(`SELECT `+endpointColumns+` FROM {{schema}}.endpoints
			WHERE (created_at, id) > ($1, $2) ORDER BY created_at, id LIMIT $3`), *after, afterID, limit+1)
	}
	if err != nil {
		return nil, "", 0, fmt.Errorf("list endpoints: %w", err)
	}
	eps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Endpoint, error) { return scanEndpoint(r) })
	if err != nil {
		return nil, "", 0, fmt.Errorf("list endpoints: %w", err)
	}
	var total int
	if err := a.pool.QueryRow(ctx, a.q(`SELECT count(*) FROM {{schema}}.endpoints`)).Scan(&total); err != nil {
		return nil, "", 0, fmt.Errorf("count endpoints: %w", err)
	}
	next := ""
	if len(eps) > limit {
		eps = eps[:limit]
		last := eps[limit-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	return eps, next, total, nil
}

// GetEndpoint returns one endpoint or ErrNotFound.
func (a *Admin) GetEndpoint(ctx context.Context, id string) (Endpoint, error) {
	if err := checkID("endpoint", id); err != nil {
		return Endpoint{}, err
	}
	e, err := scanEndpoint(a.pool.QueryRow(ctx, a.q(`SELECT `+endpointColumns+` FROM {{schema}}.endpoints WHERE id = $1`), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, fmt.Errorf("endpoint %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("get endpoint: %w", err)
	}
	return e, nil
}

// lockEndpoint reads an endpoint's static flag under a row lock, so a patch
// and a concurrent change by another process are serialised.
func (a *Admin) lockEndpoint(ctx context.Context, tx pgx.Tx, id string) (static, active bool, err error) {
	err = tx.QueryRow(ctx, a.q(`SELECT static, active FROM {{schema}}.endpoints WHERE id = $1 FOR UPDATE`), id).Scan(&static, &active)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, fmt.Errorf("endpoint %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return false, false, fmt.Errorf("lock endpoint: %w", err)
	}
	return static, active, nil
}

// staticPatch refuses a patch of a static endpoint (row locked in tx)
// unless it only turns it on or off: an admin re-enables a static
// endpoint that walhook disabled (a 410, the disable rule) or pauses one,
// as an API one; the rest of it is the config file's, and so is an
// endpoint the file disables.
func (a *Admin) staticPatch(ctx context.Context, tx pgx.Tx, id string, p EndpointPatch) error {
	if p.URL != nil || p.Description != nil || p.Events != nil || p.Auctions != nil {
		return fmt.Errorf("endpoint %q: %w: change the file and restart (only \"active\" can be set here)", id, ErrStaticEndpoint)
	}
	if p.Active == nil || !*p.Active {
		return nil
	}
	var reason string
	if err := tx.QueryRow(ctx, a.q(`SELECT coalesce(disabled_reason, '') FROM {{schema}}.endpoints WHERE id = $1`), id).Scan(&reason); err != nil {
		return fmt.Errorf("lock endpoint: %w", err)
	}
	if reason == configDisabledReason {
		return fmt.Errorf("endpoint %q: %w: the file disables it (disabled: true); set disabled: false there and restart", id, ErrStaticEndpoint)
	}
	return nil
}

// UpdateEndpoint applies a patch. A static endpoint takes only active
// (see staticPatch). Setting
// active=false skips the endpoint's pending deliveries (kept, recoverable);
// active=true clears the disabled reason and the failing state, but does not
// re-queue anything: that is Recover, so an admin decides what to resend.
func (a *Admin) UpdateEndpoint(ctx context.Context, id string, p EndpointPatch) (Endpoint, error) {
	if p.URL != nil {
		if err := a.checkURL(*p.URL); err != nil {
			return Endpoint{}, err
		}
	}
	if err := checkID("endpoint", id); err != nil {
		return Endpoint{}, err
	}
	var out Endpoint
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		// Waits for a skip of its pending deliveries (see skipPending) or
		// a recover under way. Before the endpoints lock: appends must not
		// wait for as long as those take.
		if _, err := tx.Exec(ctx, reenableLockSQL, a.d.skipLockKey(id)); err != nil {
			return fmt.Errorf("lock endpoint: %w", err)
		}
		if _, err := tx.Exec(ctx, a.q(lockEndpointsSQL)); err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		static, _, err := a.lockEndpoint(ctx, tx, id)
		if err != nil {
			return err
		}
		if static {
			if err := a.staticPatch(ctx, tx, id, p); err != nil {
				return err
			}
		}
		var events, auctions []string
		if p.Events != nil {
			events = nonNil(*p.Events)
		}
		if p.Auctions != nil {
			auctions = nonNil(*p.Auctions)
		}
		// CASE keeps disabled_at and the failing state when active does not
		// change value, so a PUT {"active": false} twice keeps the first time.
		out, err = scanEndpoint(tx.QueryRow(ctx, a.q(`
			UPDATE {{schema}}.endpoints SET
				url = coalesce($2, url),
				description = coalesce($3, description),
				events = coalesce($4, events),
				auctions = coalesce($5, auctions),
				disabled_reason = CASE WHEN $6::boolean IS NULL OR $6 = active THEN disabled_reason
				                       WHEN $6 THEN NULL ELSE $7 END,
				disabled_at = CASE WHEN $6::boolean IS NULL OR $6 = active THEN disabled_at
				                   WHEN $6 THEN NULL ELSE now() END,
				failing_since = CASE WHEN $6 AND NOT active THEN NULL ELSE failing_since END,
				active = coalesce($6, active),
				updated_at = now()
			WHERE id = $1
			RETURNING `+endpointColumns),
			id, p.URL, p.Description, events, auctions, p.Active, adminDisabledReason))
		if err != nil {
			return fmt.Errorf("update endpoint: %w", err)
		}
		if p.Active != nil && !*p.Active {
			if _, err := tx.Exec(ctx, notifyEndpointsOffSQL, a.d.channel, []string{id}); err != nil {
				return fmt.Errorf("notify endpoint off: %w", err)
			}
		}
		if p.URL != nil {
			if _, err := tx.Exec(ctx, notifyEndpointsChangedSQL, a.d.channel, []string{id}); err != nil {
				return fmt.Errorf("notify endpoint changed: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return Endpoint{}, err
	}
	if p.URL != nil {
		a.d.noteChanged(id) // here at once; other processes at the notification
	}
	if p.Active != nil && !*p.Active {
		a.d.noteDisabled(id)
		// After the commit (see lockEndpointsSQL); claims pass them by
		// meanwhile, and the maintenance loop finishes a failed skip.
		if _, err := a.d.skipPending(ctx, id); err != nil {
			a.d.log.Warn("endpoint disabled; skipping its pending deliveries failed (maintenance will)",
				slog.String("endpoint", id), slog.Any("error", err))
		}
	}
	return out, nil
}

// SendTest sends a "webhook.test" event to the endpoint now, through the
// dispatcher's real delivery path (see Dispatcher.SendTest).
func (a *Admin) SendTest(ctx context.Context, endpointID string) (TestResult, error) {
	if err := checkID("endpoint", endpointID); err != nil {
		return TestResult{}, err
	}
	return a.d.SendTest(ctx, endpointID)
}

// DeleteEndpoint removes an API endpoint with its deliveries and attempts.
// The events stay until retention removes them. The transaction that
// deletes the endpoint changes nothing else, so appends wait only for it;
// it leaves a tombstone, and the deliveries and attempts are deleted after
// it in batches (purgeDeleted), by the maintenance loop if this process
// stops first. Nothing is sent to the endpoint once it is deleted: claims
// take only existing endpoints' deliveries, and this process drops the
// ones it holds.
func (a *Admin) DeleteEndpoint(ctx context.Context, id string) error {
	if err := checkID("endpoint", id); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		// Waits for a recover or skip under way before the endpoints
		// lock (see UpdateEndpoint).
		if _, err := tx.Exec(ctx, reenableLockSQL, a.d.skipLockKey(id)); err != nil {
			return fmt.Errorf("lock endpoint: %w", err)
		}
		if _, err := tx.Exec(ctx, a.q(lockEndpointsSQL)); err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		static, _, err := a.lockEndpoint(ctx, tx, id)
		if err != nil {
			return err
		}
		if static {
			return fmt.Errorf("endpoint %q: %w", id, ErrStaticEndpoint)
		}
		if _, err := tx.Exec(ctx, a.q(`DELETE FROM {{schema}}.endpoints WHERE id = $1`), id); err != nil {
			return fmt.Errorf("delete endpoint: %w", err)
		}
		if _, err := tx.Exec(ctx, a.q(tombstoneSQL), []string{id}); err != nil {
			return fmt.Errorf("delete endpoint: %w", err)
		}
		if _, err := tx.Exec(ctx, notifyEndpointsOffSQL, a.d.channel, []string{id}); err != nil {
			return fmt.Errorf("notify endpoint off: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	a.d.noteDisabled(id)
	a.d.metrics.forgetEndpoint(id)
	if _, err := a.d.purgeDeleted(ctx, id, tombstonePass); err != nil {
		a.d.log.Warn("endpoint deleted; deleting its deliveries failed (maintenance will)",
			slog.String("endpoint", id), slog.Any("error", err))
	}
	return nil
}

const deliveryColumns = `id, event_id, endpoint_id, event_type, status, attempts, next_attempt_at,
	coalesce(last_status_code, 0), coalesce(last_error, ''), coalesce(last_duration_ms, 0),
	created_at, updated_at, delivered_at`

func scanDelivery(row pgx.Row) (Delivery, error) {
	var d Delivery
	var durMS int
	var deliveredAt *time.Time
	err := row.Scan(&d.ID, &d.EventID, &d.EndpointID, &d.EventType, &d.Status, &d.Attempts, &d.NextAttemptAt,
		&d.LastStatusCode, &d.LastError, &durMS, &d.CreatedAt, &d.UpdatedAt, &deliveredAt)
	if err != nil {
		return Delivery{}, err
	}
	d.LastDuration = time.Duration(durMS) * time.Millisecond
	d.DeliveredAt = deref(deliveredAt)
	d.NextAttemptAt = d.NextAttemptAt.UTC()
	d.CreatedAt = d.CreatedAt.UTC()
	d.UpdatedAt = d.UpdatedAt.UTC()
	return d, nil
}

// ListDeliveries pages through an endpoint's deliveries, newest first, by
// keyset (created_at DESC, id) — the order of the deliveries_endpoint_created
// index, so a page reads only its own rows.
func (a *Admin) ListDeliveries(ctx context.Context, endpointID string, f DeliveryFilter) ([]Delivery, string, error) {
	if f.Status != "" && !validStatus(f.Status) {
		return nil, "", fmt.Errorf("status %q: must be one of %s", f.Status, strings.Join(DeliveryStatuses, ", "))
	}
	before, beforeID, err := decodeCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	if _, err := a.GetEndpoint(ctx, endpointID); err != nil {
		return nil, "", err
	}
	limit := clampLimit(f.Limit)
	sql, args := listDeliveriesSQL(endpointID, f.Status, nullTime(f.Since), nullTime(f.Until), before, beforeID, limit+1)
	rows, err := a.pool.Query(ctx, a.q(sql), args...)
	if err != nil {
		return nil, "", fmt.Errorf("list deliveries: %w", err)
	}
	ds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) { return scanDelivery(r) })
	if err != nil {
		return nil, "", fmt.Errorf("list deliveries: %w", err)
	}
	next := ""
	if len(ds) > limit {
		ds = ds[:limit]
		last := ds[limit-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	return ds, next, nil
}

// listDeliveriesSQL is ListDeliveries' statement with only the filters it
// was given, and the status (one of DeliveryStatuses) written out rather
// than a parameter. pgx prepares each statement, and PostgreSQL plans one
// generically after five executions: written as ($n IS NULL OR …) in one
// statement for every filter, no filter could be an index condition in
// that plan, so a page 1,000,000 rows deep read those rows first; and a
// status parameter matches no partial index, so a status filter read the
// endpoint's whole history to find its few failed rows.
func listDeliveriesSQL(endpointID, status string, since, until, before *time.Time, beforeID string, limit int) (string, []any) {
	args := []any{endpointID}
	where := []string{"endpoint_id = $1"}
	if status != "" {
		// Safe to write out: callers accept only DeliveryStatuses.
		where = append(where, "status = '"+status+"'")
	}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if since != nil {
		where = append(where, "created_at >= "+arg(*since))
	}
	if until != nil {
		where = append(where, "created_at < "+arg(*until))
	}
	if before != nil {
		where = append(where, "(created_at, id) < ("+arg(*before)+"::timestamptz, "+arg(beforeID)+"::text)")
	}
	sql := `SELECT ` + deliveryColumns + ` FROM {{schema}}.deliveries
		WHERE ` + strings.Join(where, " AND ") + `
		ORDER BY created_at DESC, id DESC
		LIMIT ` + arg(limit)
	return sql, args
}

// GetDelivery returns a delivery with its attempts, oldest first.
func (a *Admin) GetDelivery(ctx context.Context, id string) (Delivery, []Attempt, error) {
	if err := checkID("delivery", id); err != nil {
		return Delivery{}, nil, err
	}
	// Not one of a deleted endpoint, whose history the purge (or
	// maintenance) may not have reached yet: it is gone for the API.
	d, err := scanDelivery(a.pool.QueryRow(ctx, a.q(`SELECT `+deliveryColumns+` FROM {{schema}}.deliveries d
		WHERE id = $1 AND EXISTS (SELECT 1 FROM {{schema}}.endpoints e WHERE e.id = d.endpoint_id)`), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Delivery{}, nil, fmt.Errorf("delivery %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Delivery{}, nil, fmt.Errorf("get delivery: %w", err)
	}
	rows, err := a.pool.Query(ctx, a.q(`
		SELECT attempt, started_at, duration_ms, coalesce(status_code, 0), coalesce(error, ''),
		       coalesce(response_body, ''), signed_by
		FROM {{schema}}.attempts WHERE delivery_id = $1 ORDER BY id`), id)
	if err != nil {
		return Delivery{}, nil, fmt.Errorf("get attempts: %w", err)
	}
	atts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Attempt, error) {
		var at Attempt
		var ms int
		err := r.Scan(&at.Attempt, &at.StartedAt, &ms, &at.StatusCode, &at.Error, &at.ResponseBody, &at.Signatures)
		at.Duration = time.Duration(ms) * time.Millisecond
		at.StartedAt = at.StartedAt.UTC()
		return at, err
	})
	if err != nil {
		return Delivery{}, nil, fmt.Errorf("get attempts: %w", err)
	}
	return d, atts, nil
}

// Redeliver puts one delivery back to pending, due now, with its attempt
// count reset so it gets the whole retry schedule again. Its earlier attempts
// stay in the log. The endpoint must be active; a delivery a worker holds
// right now is refused (ErrDeliveryInFlight) rather than sent twice at once.
func (a *Admin) Redeliver(ctx context.Context, id string) (Delivery, error) {
	if err := checkID("delivery", id); err != nil {
		return Delivery{}, err
	}
	var out Delivery
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		var endpointID, status string
		var test bool
		err := tx.QueryRow(ctx, a.q(`SELECT endpoint_id, status, `+isTestSend+` FROM {{schema}}.deliveries WHERE id = $1 FOR UPDATE`), id).
			Scan(&endpointID, &status, &test)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("delivery %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("lock delivery: %w", err)
		}
		if test {
			// Requeued, it would be claimed as an ordinary delivery:
			// retried on the schedule and counted in the endpoint's health.
			return fmt.Errorf("delivery %q: %w", id, ErrTestSend)
		}
		if status == "delivering" {
			return fmt.Errorf("delivery %q: %w", id, ErrDeliveryInFlight)
		}
		var active bool
		err = tx.QueryRow(ctx, a.q(`SELECT active FROM {{schema}}.endpoints WHERE id = $1 FOR SHARE`), endpointID).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) { // deleted; its history goes next
			return fmt.Errorf("delivery %q: %w", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("read endpoint: %w", err)
		}
		if !active {
			return fmt.Errorf("endpoint %q: %w", endpointID, ErrEndpointInactive)
		}
		out, err = scanDelivery(tx.QueryRow(ctx, a.q(`
			UPDATE {{schema}}.deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),
				locked_by = NULL, locked_until = NULL, delivered_at = NULL, updated_at = now()
			WHERE id = $1 RETURNING `+deliveryColumns), id))
		if err != nil {
			return fmt.Errorf("requeue delivery: %w", err)
		}
		return nil
	})
	if err != nil {
		return Delivery{}, err
	}
	a.d.Notify()
	return out, nil
}

// Recover re-queues an endpoint's failed and skipped deliveries created at or
// after since (test sends excepted): pending, due now, attempts reset. It returns how many. The
// endpoint must be active (re-enable it first with UpdateEndpoint).
func (a *Admin) Recover(ctx context.Context, endpointID string, since time.Time) (int, error) {
	if err := checkID("endpoint", endpointID); err != nil {
		return 0, err
	}
	var n int
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		// A recover of a large backlog takes a while. It holds the
		// endpoint's skip lock, not its row: a disable's skip of pending
		// deliveries (skipPending) waits for it and then skips what it
		// made pending; the endpoint's other admin calls wait for it before
		// they take the endpoints lock, so appends never wait for it; and
		// the row is only KEY SHARE locked (kept from being deleted), so
		// the recorder's health update of the endpoint, which every
		// endpoint's 2xx outcomes queue behind, does not wait for it.
		if _, err := tx.Exec(ctx, reenableLockSQL, a.d.skipLockKey(endpointID)); err != nil {
			return fmt.Errorf("lock endpoint: %w", err)
		}
		var active bool
		err := tx.QueryRow(ctx, a.q(`SELECT active FROM {{schema}}.endpoints WHERE id = $1 FOR KEY SHARE`), endpointID).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("endpoint %q: %w", endpointID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("read endpoint: %w", err)
		}
		if !active {
			return fmt.Errorf("endpoint %q: %w", endpointID, ErrEndpointInactive)
		}
		// The rows are read through the partial indexes of failed and
		// skipped deliveries (status as two OR'ed equalities, which the
		// planner matches to each index; IN matches neither), under
		// indexPlans: through (endpoint_id, created_at), or a sequential
		// scan, a recover read the endpoint's whole delivered history.
		if _, err := tx.Exec(ctx, indexPlans); err != nil {
			return fmt.Errorf("recover deliveries: %w", err)
		}
		tag, err := tx.Exec(ctx, a.q(`
			UPDATE {{schema}}.deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),
				locked_by = NULL, locked_until = NULL, updated_at = now()
			WHERE endpoint_id = $1 AND (status = 'failed' OR status = 'skipped') AND created_at >= $2
				AND NOT `+isTestSend), endpointID, since) // test sends are never retried
		if err != nil {
			return fmt.Errorf("recover deliveries: %w", err)
		}
		n = int(tag.RowsAffected())
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n > 0 {
		a.d.Notify()
	}
	return n, nil
}

// RotateSecret gives an API endpoint a new secret. The old one keeps signing
// alongside it (two signatures per request) for overlap, so receivers can
// switch without dropping a delivery; overlap 0 drops it at once.
func (a *Admin) RotateSecret(ctx context.Context, endpointID string, overlap time.Duration) (string, time.Time, error) {
	if err := checkID("endpoint", endpointID); err != nil {
		return "", time.Time{}, err
	}
	if overlap < 0 {
		overlap = 0
	}
	secret := NewSecret()
	var until *time.Time
	err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
		// Waits for a recover or skip under way before the endpoints
		// lock (see UpdateEndpoint).
		if _, err := tx.Exec(ctx, reenableLockSQL, a.d.skipLockKey(endpointID)); err != nil {
			return fmt.Errorf("lock endpoint: %w", err)
		}
		if _, err := tx.Exec(ctx, a.q(lockEndpointsSQL)); err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		static, _, err := a.lockEndpoint(ctx, tx, endpointID)
		if err != nil {
			return err
		}
		if static {
			return fmt.Errorf("endpoint %q: %w", endpointID, ErrStaticEndpoint)
		}
		err = tx.QueryRow(ctx, a.q(`
			UPDATE {{schema}}.endpoints SET
				previous_secret = CASE WHEN $3 > 0 THEN secret END,
				previous_secret_until = CASE WHEN $3 > 0 THEN now() + make_interval(secs => $3) END,
				secret = $2, updated_at = now()
			WHERE id = $1 RETURNING previous_secret_until`),
			endpointID, secret, overlap.Seconds()).Scan(&until)
		if err != nil {
			return fmt.Errorf("rotate secret: %w", err)
		}
		if _, err := tx.Exec(ctx, notifyEndpointsChangedSQL, a.d.channel, []string{endpointID}); err != nil {
			return fmt.Errorf("notify endpoint changed: %w", err)
		}
		return nil
	})
	if err != nil {
		return "", time.Time{}, err
	}
	a.d.noteChanged(endpointID) // here at once; other processes at the notification
	return secret, deref(until), nil
}

// OutboxStatus is the store's view for the status API.
type OutboxStatus struct {
	Pending    int
	Delivering int
	// AwaitingRescue: of Delivering, those whose lease has passed: the
	// process that claimed them stopped or lost the store mid-attempt,
	// and the next maintenance pass makes them pending again.
	AwaitingRescue   int
	Failing          int // pending deliveries that have failed at least once
	Failed           int // exhausted, kept for recovery
	Skipped          int
	OldestPendingAge time.Duration
	// DeliveredLastMinute / 60 is the recent delivery rate.
	DeliveredLastMinute int
	Endpoints           EndpointHealth
}

// EndpointHealth counts endpoints by state and lists the troubled ones.
type EndpointHealth struct {
	Healthy  int
	Failing  []EndpointState
	Disabled []EndpointState
}

// EndpointState names an endpoint that is failing or disabled.
type EndpointState struct {
	ID     string
	Reason string
	Since  time.Time
}

// outboxStatusSQL reads each count through the partial index of its
// status (pending, delivering, failed, skipped; deliveries_done from a
// minute ago for the delivered ones), one status at a time: a condition
// like status IN ('pending', 'delivering') matches no partial index and
// read the whole delivered history kept for retention. The pending rows
// (a dead endpoint's backlog can be most of them) are read once for their
// count, the count of those retried and the oldest; those of deleted
// endpoints, never sent and deleted over several maintenance passes
// (purgeTombstones), are left out. It runs under
// indexPlans: with statistics that showed many rows pending, the planner
// preferred a sequential scan of the whole table.
const outboxStatusSQL = `
SELECT
    p.n,
    (SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'delivering'),
    p.failing,
    (SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'failed'),
    (SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'skipped'),
    least(p.oldest, (SELECT min(created_at) FROM {{schema}}.deliveries WHERE status = 'delivering')),
    (SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'delivered' AND updated_at > now() - interval '1 minute'),
    now(),
    (SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'delivering' AND locked_until < now())
FROM (SELECT count(*) AS n, count(*) FILTER (WHERE attempts > 0) AS failing, min(created_at) AS oldest
      FROM {{schema}}.deliveries WHERE status = 'pending'
          AND endpoint_id NOT IN (SELECT id FROM {{schema}}.endpoints_deleted)) p`

// OutboxStatus reads outbox depth and endpoint health, at a cost that
// does not grow with the delivered history (outboxStatusSQL).
//
// The endpoints are read first: the counts may take longer than ctx
// allows, and a request that stops waiting for them still has its
// endpoints and the last counts (see outboxCounts).
func (a *Admin) OutboxStatus(ctx context.Context) (OutboxStatus, error) {
	eps, err := a.endpointHealth(ctx)
	if err != nil {
		return OutboxStatus{}, err
	}
	s, err := a.outboxCounts(ctx)
	if errors.Is(err, ErrStillCounting) {
		return OutboxStatus{Endpoints: eps}, err
	}
	if err != nil {
		return OutboxStatus{}, err
	}
	s.Endpoints = eps
	return s, nil
}

// endpointHealth sorts the endpoints into healthy, failing and disabled.
func (a *Admin) endpointHealth(ctx context.Context) (EndpointHealth, error) {
	h := EndpointHealth{Failing: []EndpointState{}, Disabled: []EndpointState{}}
	rows, err := a.pool.Query(ctx, a.q(`
		SELECT id, active, coalesce(disabled_reason, ''), disabled_at, failing_since
		FROM {{schema}}.endpoints ORDER BY id`))
	if err != nil {
		return h, fmt.Errorf("endpoint health: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, reason string
		var active bool
		var disabledAt, failingSince *time.Time
		if err := rows.Scan(&id, &active, &reason, &disabledAt, &failingSince); err != nil {
			return h, fmt.Errorf("endpoint health: %w", err)
		}
		switch {
		case !active:
			h.Disabled = append(h.Disabled, EndpointState{ID: id, Reason: reason, Since: deref(disabledAt)})
		case failingSince != nil:
			h.Failing = append(h.Failing, EndpointState{ID: id, Reason: "no 2xx since the first failure", Since: deref(failingSince)})
		default:
			h.Healthy++
		}
	}
	if err := rows.Err(); err != nil {
		return h, fmt.Errorf("endpoint health: %w", err)
	}
	return h, nil
}

// statusReuseFrom is the cost of the outbox counts (about 0.3 s for
// 400,000 pending) from which a status request reuses them: below it every
// request counts, so a status read right after a change shows it.
const statusReuseFrom = 100 * time.Millisecond

// statusCountTimeout bounds one count of the outbox. It is longer than
// a status request's own deadline: with tens of millions pending the
// counts take longer than a request waits (about 5 s at 20,000,000 here),
// and the count goes on so that the next request has it.
const statusCountTimeout = 5 * time.Minute

// ErrStillCounting is returned by OutboxStatus, with the endpoints' health
// and no counts, when its context ends before the first count of the
// outbox: the count goes on in the background, and a later request gets
// it.
var ErrStillCounting = errors.New("counting the outbox takes longer than this request may wait; the count goes on, ask again shortly")

// outboxCounts returns the outbox counts: the last ones while they are
// fresh enough (see Admin.counts), or those of a count it starts or
// joins. A request whose context ends while the count goes on gets the
// last counts there are, however old, or ErrStillCounting if there are
// none; a failed count is not reused. OldestPendingAge is grown by the
// time since the count.
func (a *Admin) outboxCounts(ctx context.Context) (OutboxStatus, error) {
	a.countsMu.Lock()
	now := time.Now()
	if a.countsRefresh.took >= statusReuseFrom && !a.countsRefresh.due(now) {
		s := a.agedCounts(now)
		a.countsMu.Unlock()
		return s, nil
	}
	run := a.counting
	if run == nil {
		run = &countRun{done: make(chan struct{})}
		a.counting = run
		go a.count(run)
	}
	a.countsMu.Unlock()
	select {
	case <-run.done:
		return run.s, run.err
	case <-ctx.Done():
	}
	a.countsMu.Lock()
	defer a.countsMu.Unlock()
	if a.countsRefresh.at.IsZero() {
		return OutboxStatus{}, fmt.Errorf("outbox status: %w", ErrStillCounting)
	}
	return a.agedCounts(time.Now()), nil
}

// agedCounts is the last counts with their oldest pending age grown by
// the time since; countsMu is held.
func (a *Admin) agedCounts(now time.Time) OutboxStatus {
	s := a.counts
	if s.OldestPendingAge > 0 {
		s.OldestPendingAge += now.Sub(a.countsRefresh.at)
	}
	return s
}

// count runs outboxStatusSQL for run, on a context of its own: the
// requests that wait for it may give up before it ends.
func (a *Admin) count(run *countRun) {
	ctx, cancel := context.WithTimeout(a.life, statusCountTimeout)
	defer cancel()
	start := time.Now()
	var s OutboxStatus
	var oldest *time.Time
	var now time.Time
	err := queryRowIndexPlans(ctx, a.pool, a.q(outboxStatusSQL), func(row pgx.Row) error {
		return row.Scan(&s.Pending, &s.Delivering, &s.Failing, &s.Failed, &s.Skipped, &oldest, &s.DeliveredLastMinute, &now, &s.AwaitingRescue)
	})
	if oldest != nil {
		s.OldestPendingAge = now.Sub(*oldest)
	}
	a.countsMu.Lock()
	if err != nil {
		err = fmt.Errorf("outbox status: %w", err)
		a.counts, a.countsRefresh = OutboxStatus{}, gaugeRefresh{} // count again next time
	} else {
		a.counts, a.countsRefresh = s, gaugeRefresh{at: start, took: time.Since(start)}
	}
	a.counting = nil
	a.countsMu.Unlock()
	run.s, run.err = s, err
	close(run.done)
}

func validStatus(s string) bool {
	for _, v := range DeliveryStatuses {
		if s == v {
			return true
		}
	}
	return false
}

func clampLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultListLimit
	case n > MaxListLimit:
		return MaxListLimit
	}
	return n
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// A cursor is base64url("<unix microseconds>:<id>"): timestamptz has
// microsecond resolution, so the keyset comparison is exact.
func encodeCursor(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + ":" + id))
}

func decodeCursor(c string) (*time.Time, string, error) {
	if c == "" {
		return nil, "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, "", ErrInvalidCursor
	}
	us, id, ok := strings.Cut(string(raw), ":")
	// Every id this store issued is PostgreSQL text; a forged one that is
	// not would fail the query (SQLSTATE 22021) instead.
	if !ok || id == "" || !isText(id) {
		return nil, "", ErrInvalidCursor
	}
	n, err := strconv.ParseInt(us, 10, 64)
	if err != nil {
		return nil, "", ErrInvalidCursor
	}
	t := time.UnixMicro(n).UTC()
	// A cursor this store issued holds a created_at; a forged one outside
	// PostgreSQL's range would make pgx send a value that overflows and
	// silently matches nothing.
	if y := t.Year(); y < 1 || y > 9999 {
		return nil, "", ErrInvalidCursor
	}
	return &t, id, nil
}
