package dispatch

import (
	"context"
	"fmt"

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
	// Deliveries of static endpoints no longer configured go first, while
	// appends run on (see deleteEndpointsSQL); those appended meanwhile go
	// with the endpoints.
	var gone []string
	rows, err := d.pool.Query(ctx, d.q(`SELECT id FROM {{schema}}.endpoints WHERE static AND NOT (id = ANY($1::text[]))`), ids)
	if err == nil {
		gone, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err == nil && len(gone) > 0 {
		_, err = d.pool.Exec(ctx, d.q(deleteDeliveriesOfSQL), gone)
	}
	if err != nil {
		return fmt.Errorf("sync static endpoints: delete deliveries of static endpoints no longer configured: %w", err)
	}
	err = pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, d.q(lockEndpointsSQL)); err != nil {
			return fmt.Errorf("lock endpoints: %w", err)
		}
		for i, e := range eps {
			_, err := tx.Exec(ctx, d.q(upsertStaticSQL), ids[i], e.URL, e.Description,
				nonNilStrings(e.Events), nonNilStrings(e.Auctions), e.Secret, e.Disabled,
				configDisabledReason, d.opts.SecretOverlap.Seconds())
			if err != nil {
				return fmt.Errorf("upsert static endpoint %q: %w", e.Name, err)
			}
		}
		rows, err := tx.Query(ctx, d.q(`DELETE FROM {{schema}}.endpoints WHERE static AND NOT (id = ANY($1::text[])) RETURNING id`), ids)
		if err != nil {
			return fmt.Errorf("delete static endpoints no longer configured: %w", err)
		}
		gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("delete static endpoints no longer configured: %w", err)
		}
		if len(gone) > 0 {
			if _, err := tx.Exec(ctx, d.q(deleteDeliveriesOfSQL), gone); err != nil {
				return fmt.Errorf("delete deliveries of static endpoints no longer configured: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sync static endpoints: %w", err)
	}
	// Deliveries of endpoints the config disables stop now (claims pass
	// inactive endpoints by already).
	if _, err := d.pool.Exec(ctx, d.q(`UPDATE {{schema}}.deliveries SET status = 'skipped', updated_at = now()
			WHERE status = 'pending' AND endpoint_id = ANY($1::text[])
			  AND endpoint_id IN (SELECT id FROM {{schema}}.endpoints WHERE NOT active)`), ids); err != nil {
		return fmt.Errorf("sync static endpoints: skip deliveries of disabled endpoints: %w", err)
	}
	d.Notify()
	return nil
}

// lockEndpointsSQL is the first statement of every transaction that
// changes what the fan-out reads of endpoints (migration 007). The
// triggers would take this lock at the first change anyway; taking it
// before any endpoint or delivery row keeps one lock order — version row,
// endpoint rows, deliveries — shared with Append (version row, then
// deliveries), so none of them can deadlock another. Every Append waits
// while it is held: such a transaction changes endpoint rows only, and
// skips or deletes their deliveries in statements of their own.
const lockEndpointsSQL = `SELECT FROM {{schema}}.endpoints_version FOR UPDATE`

// skipPendingSQL skips the pending deliveries of endpoint $1 if it is
// disabled, after the transaction that disabled it; claims pass them by
// meanwhile (they claim for active endpoints only), and the maintenance
// sweep (skipDisabledSQL) skips any this statement did not get to.
const skipPendingSQL = `UPDATE {{schema}}.deliveries SET status = 'skipped', updated_at = now()
	WHERE endpoint_id = $1 AND status = 'pending'
	  AND NOT coalesce((SELECT active FROM {{schema}}.endpoints WHERE id = $1), true)`

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
    updated_at = now()`

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// deleteDeliveriesOfSQL deletes the deliveries of the endpoints in $1 and
// their attempts. Deleting endpoints runs it twice: first on its own,
// while appends go on (the bulk of the history, without holding them
// up), then in the transaction that deletes the endpoints, after that
// DELETE: the DELETE's trigger waited for every Append in flight (they
// hold endpoints_version FOR SHARE) and holds the next ones off, so this
// statement's snapshot sees the few they wrote meanwhile and none can
// follow. No delivery is left pointing at an endpoint that is gone.
const deleteDeliveriesOfSQL = `
WITH gone AS (
    DELETE FROM {{schema}}.deliveries WHERE endpoint_id = ANY($1::text[]) RETURNING id
)
DELETE FROM {{schema}}.attempts a USING gone WHERE a.delivery_id = gone.id`
