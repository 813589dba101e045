package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
)

// StaticEndpoint is an endpoint defined in the config file. Its store id is
// "static:" + Name.
type StaticEndpoint struct {
	Name, URL, Secret, Description string
	Events, Auctions               []string
	Disabled                       bool
}

// StaticPrefix starts the store id of every static endpoint.
const StaticPrefix = "static:"

// configDisabledReason marks endpoints disabled by the config file, so a
// later config that enables them again re-activates them, while an endpoint
// disabled at runtime (410, the disable rule, an admin) stays disabled
// across restarts until someone re-enables it.
const configDisabledReason = "disabled in the config file"

// SyncStaticEndpoints makes the store's static endpoints equal to eps:
// upserts each one and deletes static endpoints no longer configured (their
// deliveries go with them). A changed secret keeps the old one signing for
// SecretOverlap, as a rotation through the API would, so receivers can be
// switched without losing deliveries. It runs in one transaction.
func (d *Dispatcher) SyncStaticEndpoints(ctx context.Context, eps []StaticEndpoint) error {
	ids := make([]string, 0, len(eps))
	seen := map[string]bool{}
	for _, e := range eps {
		if e.Name == "" {
			return fmt.Errorf("static endpoint without a name")
		}
		if seen[e.Name] {
			return fmt.Errorf("static endpoint %q: defined twice", e.Name)
		}
		seen[e.Name] = true
		if err := d.client.ValidateURL(e.URL); err != nil {
			return fmt.Errorf("static endpoint %q: %w", e.Name, err)
		}
		if _, err := DecodeSecret(e.Secret); err != nil {
			return fmt.Errorf("static endpoint %q: %w", e.Name, err)
		}
		ids = append(ids, StaticPrefix+e.Name)
	}
	// In id order, as every transaction that locks several endpoint rows
	// (the recorder too): two of them cannot wait for each other.
	order := make([]int, len(eps))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return ids[order[a]] < ids[order[b]] })
	var gone []string
	var err error
	for try := 1; ; try++ {
		err = d.syncStatic(ctx, eps, ids, order, &gone, try < 3)
		if !errors.Is(err, errStaticChanged) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("sync static endpoints: %w", err)
	}
	return d.afterStaticSync(ctx, eps, ids, gone)
}

// errStaticChanged: another process's sync added a static endpoint after
// this one read the list whose skip locks it took; it starts again.
var errStaticChanged = errors.New("the static endpoints changed meanwhile")

// syncStatic is SyncStaticEndpoints' transaction. With recheck, it ends
// with errStaticChanged when a static endpoint appeared between its read
// of them and its endpoints lock (without that endpoint's skip lock, a
// recover of it would hold this transaction, and every append with it).
func (d *Dispatcher) syncStatic(ctx context.Context, eps []StaticEndpoint, ids []string, order []int, gone *[]string, recheck bool) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		// The skip lock of every endpoint this may change, configured or
		// static now (to be deleted): an endpoint the config enables may
		// be one whose disable is being skipped, and the re-enable waits
		// for that skip (see skipPending); a recover under way holds it
		// too. Advisory locks come first, in id order, then the endpoints
		// lock, so appends never wait for a skip or a recover; then every
		// endpoint row this changes, in id order, before any is changed
		// (the delete of static endpoints no longer configured would take
		// its rows in another order).
		rows, err := tx.Query(ctx, d.q(`SELECT id FROM {{schema}}.endpoints WHERE static`))
		if err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		static, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		if d.afterStaticRead != nil {
			d.afterStaticRead()
		}
		locks := slices.Clone(ids)
		for _, id := range static {
			if !slices.Contains(locks, id) {
				locks = append(locks, id)
			}
		}
		slices.Sort(locks)
		// One round trip for all of them (and for the upserts below): a
		// few hundred static endpoints took two round trips each, the
		// upserts' while every Append waited for the endpoints lock.
		lb := &pgx.Batch{}
		for _, id := range locks {
			lb.Queue(reenableLockSQL, d.skipLockKey(id))
		}
		if err := tx.SendBatch(ctx, lb).Close(); err != nil {
			return fmt.Errorf("lock endpoint: %w", err)
		}
		if _, err := tx.Exec(ctx, d.q(lockEndpointsSQL)); err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		if recheck {
			var added bool
			if err := tx.QueryRow(ctx, d.q(`SELECT EXISTS (SELECT FROM {{schema}}.endpoints WHERE static AND NOT (id = ANY($1::text[])))`),
				locks).Scan(&added); err != nil {
				return fmt.Errorf("lock endpoints: %w", err)
			}
			if added {
				return errStaticChanged
			}
		}
		// A static endpoint configured again is the same endpoint: what is
		// left of its history stays. Before the endpoint rows are locked:
		// this waits for a purge batch under way (purgeDeleted), which may
		// wait for an outcome that then locks endpoint rows.
		if _, err := tx.Exec(ctx, d.q(`DELETE FROM {{schema}}.endpoints_deleted WHERE id = ANY($1::text[])`), ids); err != nil {
			return fmt.Errorf("upsert static endpoints: %w", err)
		}
		rows, err = tx.Query(ctx, d.q(`SELECT id, url, secret FROM {{schema}}.endpoints WHERE static OR id = ANY($1::text[]) ORDER BY id FOR UPDATE`), ids)
		if err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		type was struct{ url, secret string }
		before := map[string]was{}
		var id string
		var w was
		if _, err := pgx.ForEachRow(rows, []any{&id, &w.url, &w.secret}, func() error { before[id] = w; return nil }); err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		var changed []string
		for i, e := range eps {
			if w, ok := before[ids[i]]; ok && (w.url != e.URL || w.secret != e.Secret) {
				changed = append(changed, ids[i])
			}
		}
		if len(changed) > 0 {
			if _, err := tx.Exec(ctx, notifyEndpointsChangedSQL, d.channel, changed); err != nil {
				return fmt.Errorf("notify endpoints changed: %w", err)
			}
		}
		ub := &pgx.Batch{}
		for _, i := range order {
			e := eps[i]
			ub.Queue(d.q(upsertStaticSQL), ids[i], e.URL, e.Description,
				nonNilStrings(e.Events), nonNilStrings(e.Auctions), e.Secret, e.Disabled,
				configDisabledReason, d.opts.SecretOverlap.Seconds())
		}
		br := tx.SendBatch(ctx, ub)
		for _, i := range order {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return fmt.Errorf("upsert static endpoint %q: %w", eps[i].Name, err)
			}
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("upsert static endpoints: %w", err)
		}
		rows, err = tx.Query(ctx, d.q(`DELETE FROM {{schema}}.endpoints WHERE static AND NOT (id = ANY($1::text[])) RETURNING id`), ids)
		if err != nil {
			return fmt.Errorf("delete static endpoints no longer configured: %w", err)
		}
		if *gone, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("delete static endpoints no longer configured: %w", err)
		}
		if _, err := tx.Exec(ctx, d.q(tombstoneSQL), *gone); err != nil {
			return fmt.Errorf("delete static endpoints no longer configured: %w", err)
		}
		off := append([]string(nil), *gone...)
		for i, e := range eps {
			if e.Disabled {
				off = append(off, ids[i])
			}
		}
		if len(off) > 0 {
			if _, err := tx.Exec(ctx, notifyEndpointsOffSQL, d.channel, off); err != nil {
				return fmt.Errorf("notify endpoints off: %w", err)
			}
		}
		return nil
	})
}

// afterStaticSync finishes a static sync after its commit (see
// lockEndpointsSQL): the deleted endpoints' deliveries, the disabled
// ones' pending deliveries. Both are finished by the maintenance loop if
// they fail here.
func (d *Dispatcher) afterStaticSync(ctx context.Context, eps []StaticEndpoint, ids, gone []string) error {
	for _, id := range gone {
		d.noteDisabled(id)
		d.metrics.forgetEndpoint(id)
		if _, err := d.purgeDeleted(ctx, id, tombstonePass); err != nil {
			d.log.Warn("delete the deliveries of a static endpoint no longer configured (maintenance will)",
				slog.String("endpoint", id), slog.Any("error", err))
		}
	}
	for i, e := range eps {
		if !e.Disabled {
			continue
		}
		if _, err := d.skipPending(ctx, ids[i]); err != nil {
			d.log.Warn("skip the pending deliveries of an endpoint the config disables (maintenance will)",
				slog.String("endpoint", ids[i]), slog.Any("error", err))
		}
	}
	d.Notify()
	return nil
}

// endpointOffPayload + an endpoint id, sent on the store's channel by the
// transaction that disables or deletes the endpoint (notifyEndpointsOffSQL):
// every walhook process on the store then drops the deliveries to it that
// it holds and has not started (noteDisabled), not only the one whose
// API or worker made the change.
const endpointOffPayload = "endpoint-off:"

// notifyEndpointsOffSQL notifies channel $1 that endpoints $2 are off; the
// notifications go out when the transaction commits.
const notifyEndpointsOffSQL = `SELECT pg_notify($1, '` + endpointOffPayload + `' || id) FROM unnest($2::text[]) AS t(id)`

// endpointChangedPayload + an endpoint id, sent by the transaction that
// changes the endpoint's URL or secret (notifyEndpointsChangedSQL): every
// process then hands back the deliveries to it that it claimed before and
// has not started (noteChanged), so that they are claimed again with the
// URL and secrets as they are now, not sent to the old URL or signed with
// a secret the receiver no longer holds.
const endpointChangedPayload = "endpoint-changed:"

// notifyEndpointsChangedSQL notifies channel $1 that endpoints $2 changed
// their URL or secret.
const notifyEndpointsChangedSQL = `SELECT pg_notify($1, '` + endpointChangedPayload + `' || id) FROM unnest($2::text[]) AS t(id)`

// lockEndpointsSQL is the first statement of every transaction that
// changes what the fan-out reads of endpoints (migration 007). The
// triggers would take this lock at the first change anyway; taking it
// before any endpoint or delivery row keeps one lock order — version row,
// endpoint rows, deliveries — shared with Append (version row, then
// deliveries), so none of them can deadlock another. Every Append waits
// while it is held: such a transaction changes endpoint rows only, and
// skips or deletes their deliveries in statements of their own.
const lockEndpointsSQL = `SELECT FROM {{schema}}.endpoints_version FOR UPDATE`

// skipBatch bounds one batch of purgeDeleted.
const skipBatch = 1000

// skipPending skips the pending deliveries of endpoint id while it is
// disabled, after the transaction that disabled it (claims pass them by
// meanwhile: they claim for active endpoints only), in one statement
// under an advisory lock of the endpoint that a re-enable takes before
// anything else (reenableLockSQL): a re-enable waits for a skip under way,
// and a skip after it finds the endpoint active and skips nothing, so a
// re-enabled endpoint's deliveries are not skipped behind its back. The
// maintenance loop runs it for every disabled endpoint with pending
// deliveries, for what a failed run left.
func (d *Dispatcher) skipPending(ctx context.Context, id string) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, reenableLockSQL, d.skipLockKey(id)); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, d.q(`UPDATE {{schema}}.deliveries SET status = 'skipped', updated_at = now()
			WHERE endpoint_id = $1 AND status = 'pending'
			  AND NOT coalesce((SELECT active FROM {{schema}}.endpoints WHERE id = $1), true)`), id)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return n, fmt.Errorf("skip pending deliveries of endpoint %q: %w", id, err)
	}
	return n, nil
}

// reenableLockSQL is the advisory lock of one endpoint between skipPending
// and a re-enable.
const reenableLockSQL = `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`

func (d *Dispatcher) skipLockKey(id string) string { return "walhook skip " + d.schema + " " + id }

// tombstoneSQL records endpoints $1 as deleted, in the transaction that
// deletes them (migration 007).
const tombstoneSQL = `INSERT INTO {{schema}}.endpoints_deleted (id) SELECT unnest($1::text[]) ON CONFLICT (id) DO NOTHING`

// purgeDeleted deletes the deliveries and attempts of a deleted endpoint
// in batches of skipBatch, then its tombstone, stopping after maxRows
// deliveries (the rest is the maintenance loop's); done reports that
// nothing is left. Each batch holds the tombstone (FOR UPDATE): a
// static endpoint configured again removes it (SyncStaticEndpoints), and
// waits for the batch under way; the batches after it find no tombstone
// and delete nothing of the endpoint's history. Two purges of one
// endpoint (the API's and maintenance's) take turns batch by batch: with
// a shared lock each, two passes that both found the history gone each
// waited for the other's lock to delete the tombstone, a deadlock. The
// attempts go in a statement after the deliveries', so it sees those an
// outcome wrote meanwhile.
//
// A batch passes over deliveries another transaction holds (SKIP LOCKED):
// an outcome being recorded, a held delivery being released, the lease
// rescue. Waiting for them, in an order of its own, it could deadlock with
// another statement that changes several of them (PostgreSQL then aborted
// one; seen in a soak that deleted endpoints with deliveries in flight). A
// row passed over is deleted by a later pass.
//
// Batches continue from where the one before stopped, in the order of the
// index on (endpoint_id, created_at DESC, id), so none walks the dead
// index entries the ones before it left (which would make a large
// history's purge quadratic until vacuum).
func (d *Dispatcher) purgeDeleted(ctx context.Context, id string, maxRows int64) (done bool, err error) {
	done, _, err = d.purgeDeletedCount(ctx, id, maxRows)
	return done, err
}

// purgeDeletedCount is purgeDeleted, also returning how many deliveries
// it deleted: not done with fewer than maxRows deleted means rows others
// hold were left, not that the budget ran out.
func (d *Dispatcher) purgeDeletedCount(ctx context.Context, id string, maxRows int64) (done bool, total int64, err error) {
	after := struct {
		set bool
		at  time.Time
		id  string
	}{}
	for total < maxRows {
		var n int64
		gone := false
		err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
			var one int
			err := tx.QueryRow(ctx, d.q(`SELECT 1 FROM {{schema}}.endpoints_deleted WHERE id = $1 FOR UPDATE`), id).Scan(&one)
			if errors.Is(err, pgx.ErrNoRows) {
				gone = true
				return nil
			}
			if err != nil {
				return err
			}
			rows, err := tx.Query(ctx, d.q(`DELETE FROM {{schema}}.deliveries WHERE id IN (
				SELECT id FROM {{schema}}.deliveries WHERE endpoint_id = $1
				  AND created_at <= CASE WHEN $3 THEN $4::timestamptz ELSE 'infinity'::timestamptz END
				  AND (NOT $3 OR created_at < $4 OR (created_at = $4 AND id > $5))
				ORDER BY created_at DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, created_at`), id, skipBatch, after.set, after.at, after.id)
			if err != nil {
				return err
			}
			type deleted struct {
				ID string
				At time.Time
			}
			del, err := pgx.CollectRows(rows, pgx.RowToStructByPos[deleted])
			if err != nil {
				return err
			}
			ids := make([]string, len(del))
			for i, g := range del {
				ids[i] = g.ID
				// The last in (created_at DESC, id) order.
				if !after.set || g.At.Before(after.at) || (g.At.Equal(after.at) && g.ID > after.id) {
					after.set, after.at, after.id = true, g.At, g.ID
				}
			}
			n = int64(len(ids))
			if n == 0 && !after.set {
				// A pass from the start found nothing: the history is gone.
				// Another purge of the same endpoint may still be deleting
				// rows this pass waited for and then found gone.
				// Rows passed over as locked are still there: the
				// tombstone stays for the maintenance loop's next pass.
				tag, err := tx.Exec(ctx, d.q(`DELETE FROM {{schema}}.endpoints_deleted WHERE id = $1
					AND NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries WHERE endpoint_id = $1)`), id)
				gone = tag.RowsAffected() == 1
				return err
			}
			if n == 0 {
				return nil
			}
			_, err = tx.Exec(ctx, d.q(`DELETE FROM {{schema}}.attempts WHERE delivery_id = ANY($1::text[])`), ids)
			return err
		})
		if err != nil {
			return false, total, fmt.Errorf("delete the deliveries of deleted endpoint %q: %w", id, err)
		}
		if gone {
			return true, total, nil
		}
		if n == 0 && !after.set {
			return false, total, nil // rows left that others hold (see above)
		}
		if n == 0 {
			// The end of the history: one more pass from the start makes
			// sure nothing is left before the tombstone goes.
			after.set = false
			continue
		}
		total += n
	}
	return false, total, nil
}

const upsertStaticSQL = `
INSERT INTO {{schema}}.endpoints AS e (id, static, url, description, events, auctions, secret, active, disabled_reason, disabled_at)
VALUES ($1, true, $2, $3, $4, $5, $6, NOT $7, CASE WHEN $7 THEN $8 END, CASE WHEN $7 THEN now() END)
ON CONFLICT (id) DO UPDATE SET
    static = true,
    url = EXCLUDED.url,
    description = EXCLUDED.description,
    events = EXCLUDED.events,
    auctions = EXCLUDED.auctions,
    secret = EXCLUDED.secret,
    previous_secret = CASE WHEN e.secret <> EXCLUDED.secret THEN e.secret ELSE e.previous_secret END,
    previous_secret_until = CASE WHEN e.secret <> EXCLUDED.secret
        THEN now() + make_interval(secs => $9) ELSE e.previous_secret_until END,
    active = CASE WHEN $7 THEN false
                  WHEN e.disabled_reason = $8 THEN true
                  ELSE e.active END,
    disabled_reason = CASE WHEN $7 THEN coalesce(CASE WHEN e.active THEN NULL ELSE e.disabled_reason END, $8)
                           WHEN e.disabled_reason = $8 THEN NULL
                           ELSE e.disabled_reason END,
    disabled_at = CASE WHEN $7 THEN coalesce(CASE WHEN e.active THEN NULL ELSE e.disabled_at END, now())
                       WHEN e.disabled_reason = $8 THEN NULL
                       ELSE e.disabled_at END,
    -- Turned on again by the config: it starts afresh, as one re-enabled
    -- through the API does (the status would list it as failing since
    -- before it was turned off, and the disable rule count from then).
    failing_since = CASE WHEN NOT $7 AND NOT e.active AND e.disabled_reason = $8 THEN NULL
                         ELSE e.failing_since END,
    updated_at = now()`

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
