package dispatch

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walhook/walhook/internal/pgtest"
)

type adminBundle struct {
	pool  *pgxpool.Pool
	d     *Dispatcher
	admin *Admin
}

func setupAdmin(t *testing.T) (*Admin, *adminBundle) {
	t.Helper()
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := Migrate(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	d, err := New(pool, Options{Schema: "walhook", Client: ClientOptions{AllowHTTP: true, Allow: []string{"127.0.0.0/8"}, Timeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	a := NewAdmin(pool, "walhook", d)
	return a, &adminBundle{pool: pool, d: d, admin: a}
}

func (b *adminBundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.pool.Exec(context.Background(), q(sql), args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (b *adminBundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), q(sql), args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// addDelivery stores an event and one delivery of it to endpointID, created
// at created, with the given status and attempt count.
func (b *adminBundle) addDelivery(t *testing.T, id, endpointID, status string, attempts int, created time.Time) {
	t.Helper()
	b.exec(t, `INSERT INTO {{schema}}.events (id, type, envelope, occurred_at, data)
		VALUES ($1, 'auction.bid', 'sns', $2, '{"bid":1}') ON CONFLICT DO NOTHING`, "ev-"+id, created)
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at, next_attempt_at)
		VALUES ($1, $2, $3, 'auction.bid', $4, $5, $6, $6, $6)`, id, "ev-"+id, endpointID, status, attempts, created)
}

func mustCreate(t *testing.T, a *Admin, in EndpointInput) Endpoint {
	t.Helper()
	if in.URL == "" {
		in.URL = "https://example.com/hook"
	}
	e, err := a.CreateEndpoint(context.Background(), in)
	if err != nil {
		t.Fatalf("create endpoint: %v", err)
	}
	return e
}

func TestAdminCreateEndpoint(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()

	e := mustCreate(t, a, EndpointInput{URL: "https://example.com/a", Events: []string{"auction.bid"}, Auctions: []string{"A1"}, Description: "d"})
	if !strings.HasPrefix(e.ID, "whk_") || len(e.ID) != len("whk_")+16 {
		t.Errorf("id = %q, want whk_ + 16 hex digits", e.ID)
	}
	if key, err := DecodeSecret(e.Secret); err != nil || len(key) != 32 {
		t.Errorf("generated secret: %v (%d bytes)", err, len(key))
	}
	if !e.Active || e.Static || e.URL != "https://example.com/a" || e.Events[0] != "auction.bid" || e.Auctions[0] != "A1" || e.Description != "d" {
		t.Errorf("created endpoint = %+v", e)
	}
	got, err := a.GetEndpoint(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret != "" {
		t.Error("GetEndpoint shows the secret; it must be shown only at creation")
	}
	if !got.CreatedAt.Equal(e.CreatedAt) {
		t.Errorf("createdAt %v != %v", got.CreatedAt, e.CreatedAt)
	}

	given := NewSecret()
	e2 := mustCreate(t, a, EndpointInput{Secret: given})
	var stored string
	if err := b.pool.QueryRow(ctx, `SELECT secret FROM walhook.endpoints WHERE id = $1`, e2.ID).Scan(&stored); err != nil || stored != given {
		t.Errorf("given secret not stored: %v", err)
	}
	if e2.ID == e.ID {
		t.Error("two endpoints got the same id")
	}
}

func TestAdminCreateRefusesBadInput(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	cases := []struct {
		name string
		in   EndpointInput
		want error
	}{
		{"no url", EndpointInput{}, ErrInvalidURL},
		{"ftp", EndpointInput{URL: "ftp://example.com/x"}, ErrInvalidURL},
		{"private ip", EndpointInput{URL: "https://10.1.2.3/x"}, ErrInvalidURL},
		{"metadata ip", EndpointInput{URL: "http://169.254.169.254/latest"}, ErrInvalidURL},
		{"secret without prefix", EndpointInput{URL: "https://example.com/x", Secret: "abc"}, ErrBadSecret},
		{"secret not base64", EndpointInput{URL: "https://example.com/x", Secret: "whsec_!!!"}, ErrBadSecret},
		{"secret too short", EndpointInput{URL: "https://example.com/x", Secret: "whsec_YWJj"}, ErrBadSecret},
	}
	for _, c := range cases {
		_, err := a.CreateEndpoint(ctx, c.in)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.endpoints`); n != 0 {
		t.Errorf("%d endpoints stored after refused creates", n)
	}
}

func TestAdminListEndpointsPaginates(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	if err := b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{{Name: "ops", URL: "https://example.com/ops", Secret: NewSecret()}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"static:ops": true}
	for range 4 {
		want[mustCreate(t, a, EndpointInput{}).ID] = true
	}
	seen := map[string]bool{}
	cursor, pages := "", 0
	for {
		eps, next, total, err := a.ListEndpoints(ctx, ListOptions{Limit: 2, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if total != 5 {
			t.Errorf("total = %d, want 5", total)
		}
		if len(eps) > 2 {
			t.Errorf("page of %d, limit 2", len(eps))
		}
		for _, e := range eps {
			if seen[e.ID] {
				t.Errorf("%s listed twice", e.ID)
			}
			seen[e.ID] = true
			if e.Static != (e.ID == "static:ops") {
				t.Errorf("%s static = %v", e.ID, e.Static)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if pages != 3 || len(seen) != len(want) {
		t.Errorf("%d pages, %d endpoints seen; want 3 pages, %d endpoints", pages, len(seen), len(want))
	}
	if _, _, _, err := a.ListEndpoints(ctx, ListOptions{Cursor: "not-a-cursor"}); !errors.Is(err, ErrInvalidCursor) {
		t.Errorf("bad cursor: err = %v", err)
	}
	// Well-formed but outside PostgreSQL's timestamptz range: pgx would
	// send an overflowed value that matches nothing instead of failing.
	for _, us := range []string{"-9223372036854775808", "9223372036854775807"} {
		c := base64.RawURLEncoding.EncodeToString([]byte(us + ":whk_x"))
		if _, _, _, err := a.ListEndpoints(ctx, ListOptions{Cursor: c}); !errors.Is(err, ErrInvalidCursor) {
			t.Errorf("cursor at %s µs: err = %v, want ErrInvalidCursor", us, err)
		}
	}
}

func TestAdminGetMissing(t *testing.T) {
	a, _ := setupAdmin(t)
	ctx := context.Background()
	if _, err := a.GetEndpoint(ctx, "whk_nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetEndpoint: %v", err)
	}
	if _, _, err := a.GetDelivery(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetDelivery: %v", err)
	}
	if _, _, err := a.ListDeliveries(ctx, "whk_nope", DeliveryFilter{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("ListDeliveries: %v", err)
	}
	if err := a.DeleteEndpoint(ctx, "whk_nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteEndpoint: %v", err)
	}
	if _, err := a.UpdateEndpoint(ctx, "whk_nope", EndpointPatch{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateEndpoint: %v", err)
	}
	if _, err := a.Redeliver(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Redeliver: %v", err)
	}
	if _, err := a.Recover(ctx, "whk_nope", time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Recover: %v", err)
	}
	if _, _, err := a.RotateSecret(ctx, "whk_nope", time.Hour); !errors.Is(err, ErrNotFound) {
		t.Errorf("RotateSecret: %v", err)
	}
	if _, err := a.SendTest(ctx, "whk_nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("SendTest: %v", err)
	}
}

func TestAdminUpdateEndpoint(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{Events: []string{"auction.bid"}})
	url, events, desc := "https://example.com/new", []string{"auction.*"}, "new"
	got, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{URL: &url, Events: &events, Description: &desc})
	if err != nil {
		t.Fatal(err)
	}
	if got.URL != url || got.Events[0] != "auction.*" || got.Description != desc || !got.Active {
		t.Errorf("patched = %+v", got)
	}

	// A refused URL changes nothing.
	bad := "https://192.168.1.1/x"
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{URL: &bad, Description: new("changed")}); !errors.Is(err, ErrInvalidURL) {
		t.Errorf("bad url: %v", err)
	}
	if got, _ := a.GetEndpoint(ctx, e.ID); got.URL != url || got.Description != desc {
		t.Errorf("refused patch changed the endpoint: %+v", got)
	}

	// Disable: pending deliveries are skipped, kept.
	b.addDelivery(t, "d1", e.ID, "pending", 0, time.Now())
	b.addDelivery(t, "d2", e.ID, "delivered", 1, time.Now())
	b.exec(t, `UPDATE {{schema}}.endpoints SET failing_since = now() WHERE id = $1`, e.ID)
	off, on := false, true
	got, err = a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &off})
	if err != nil {
		t.Fatal(err)
	}
	if got.Active || got.DisabledReason != adminDisabledReason || got.DisabledAt.IsZero() {
		t.Errorf("disabled = %+v", got)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'skipped'`); n != 1 {
		t.Errorf("%d skipped deliveries, want 1 (the pending one)", n)
	}
	// Re-enable clears the reason and the failing state.
	got, err = a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &on})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Active || got.DisabledReason != "" || !got.DisabledAt.IsZero() || !got.FailingSince.IsZero() {
		t.Errorf("re-enabled = %+v", got)
	}
}

func TestAdminStaticEndpointsAreReadOnly(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	if err := b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{{Name: "ops", URL: "https://example.com/ops", Secret: NewSecret()}}); err != nil {
		t.Fatal(err)
	}
	url := "https://example.com/other"
	if _, err := a.UpdateEndpoint(ctx, "static:ops", EndpointPatch{URL: &url}); !errors.Is(err, ErrStaticEndpoint) {
		t.Errorf("update: %v", err)
	}
	if err := a.DeleteEndpoint(ctx, "static:ops"); !errors.Is(err, ErrStaticEndpoint) {
		t.Errorf("delete: %v", err)
	}
	if _, _, err := a.RotateSecret(ctx, "static:ops", time.Hour); !errors.Is(err, ErrStaticEndpoint) {
		t.Errorf("rotate: %v", err)
	}
	e, err := a.GetEndpoint(ctx, "static:ops")
	if err != nil || e.URL != "https://example.com/ops" || !e.Static {
		t.Errorf("static endpoint after refused changes: %+v, %v", e, err)
	}
}

func TestAdminDeleteEndpointCascades(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	keep := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "d1", e.ID, "failed", 6, time.Now())
	b.addDelivery(t, "d2", keep.ID, "failed", 6, time.Now())
	b.exec(t, `INSERT INTO {{schema}}.attempts (delivery_id, attempt, started_at, duration_ms) VALUES ('d1', 1, now(), 5)`)
	if err := a.DeleteEndpoint(ctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetEndpoint(ctx, e.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted endpoint still there: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = $1`, e.ID); n != 0 {
		t.Errorf("%d deliveries left for the deleted endpoint", n)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.attempts`); n != 0 {
		t.Errorf("%d attempts left", n)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = $1`, keep.ID); n != 1 {
		t.Errorf("other endpoint's deliveries: %d, want 1", n)
	}
}

func TestAdminListDeliveries(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	other := mustCreate(t, a, EndpointInput{})
	base := time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)
	statuses := []string{"delivered", "failed", "pending", "skipped", "delivered", "failed"}
	for i, st := range statuses {
		b.addDelivery(t, "d"+string(rune('0'+i)), e.ID, st, 1, base.Add(time.Duration(i)*time.Minute))
	}
	b.addDelivery(t, "x", other.ID, "delivered", 1, base)

	// Newest first, paginated, nothing twice.
	var ids []string
	cursor := ""
	for {
		ds, next, err := a.ListDeliveries(ctx, e.ID, DeliveryFilter{Limit: 4, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			ids = append(ids, d.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if got := strings.Join(ids, ","); got != "d5,d4,d3,d2,d1,d0" {
		t.Errorf("order = %s, want d5..d0", got)
	}

	ds, _, err := a.ListDeliveries(ctx, e.ID, DeliveryFilter{Status: "failed"})
	if err != nil || len(ds) != 2 || ds[0].ID != "d5" || ds[1].ID != "d1" {
		t.Errorf("status=failed: %v %v", ds, err)
	}
	ds, _, err = a.ListDeliveries(ctx, e.ID, DeliveryFilter{Since: base.Add(2 * time.Minute), Until: base.Add(4 * time.Minute)})
	if err != nil || len(ds) != 2 || ds[0].ID != "d3" || ds[1].ID != "d2" {
		t.Errorf("since/until: %v %v", ds, err)
	}
	if _, _, err := a.ListDeliveries(ctx, e.ID, DeliveryFilter{Status: "lost"}); err == nil {
		t.Error("unknown status accepted")
	}
}

func TestAdminGetDeliveryWithAttempts(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "d1", e.ID, "pending", 2, time.Now())
	b.exec(t, `UPDATE {{schema}}.deliveries SET last_status_code = 500, last_error = 'http status 500', last_duration_ms = 12 WHERE id = 'd1'`)
	b.exec(t, `INSERT INTO {{schema}}.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body, signed_by)
		VALUES ('d1', 1, now(), 10, NULL, 'connection refused', NULL, 1), ('d1', 2, now(), 12, 500, 'http status 500', 'oops', 2)`)
	d, atts, err := a.GetDelivery(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.LastStatusCode != 500 || d.LastDuration != 12*time.Millisecond || d.Attempts != 2 || d.EndpointID != e.ID {
		t.Errorf("delivery = %+v", d)
	}
	if len(atts) != 2 || atts[0].Error != "connection refused" || atts[0].StatusCode != 0 ||
		atts[1].StatusCode != 500 || atts[1].ResponseBody != "oops" || atts[1].Signatures != 2 {
		t.Errorf("attempts = %+v", atts)
	}
}

func TestAdminRedeliver(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "d1", e.ID, "failed", 6, time.Now().Add(-time.Hour))
	b.addDelivery(t, "d2", e.ID, "delivering", 1, time.Now())
	d, err := a.Redeliver(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != "pending" || d.Attempts != 0 || time.Since(d.NextAttemptAt) > time.Minute {
		t.Errorf("redelivered = %+v", d)
	}
	if _, err := a.Redeliver(ctx, "d2"); !errors.Is(err, ErrDeliveryInFlight) {
		t.Errorf("in flight: %v", err)
	}
	b.exec(t, `UPDATE {{schema}}.deliveries SET status = 'failed' WHERE id = 'd1'`)
	off := false
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Redeliver(ctx, "d1"); !errors.Is(err, ErrEndpointInactive) {
		t.Errorf("inactive endpoint: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE id = 'd1' AND status = 'failed'`); n != 1 {
		t.Error("refused redeliver changed the delivery")
	}
	// A test send is never retried: requeued, a worker would claim it as
	// an ordinary delivery.
	on := true
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &on}); err != nil {
		t.Fatal(err)
	}
	b.addTestSend(t, "t1", e.ID)
	if _, err := a.Redeliver(ctx, "t1"); !errors.Is(err, ErrTestSend) {
		t.Errorf("redeliver of a test send: %v, want ErrTestSend", err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE id = 't1' AND status = 'failed'`); n != 1 {
		t.Error("refused redeliver of a test send changed it")
	}
}

// addTestSend adds a failed delivery made by SendTest.
func (b *adminBundle) addTestSend(t *testing.T, id, endpointID string) {
	t.Helper()
	b.exec(t, `INSERT INTO {{schema}}.events (id, type, envelope, occurred_at, data)
		VALUES ($1, 'webhook.test', 'sns', now(), '{}')`, "test:"+id)
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts)
		VALUES ($1, $2, $3, 'webhook.test', 'failed', 1)`, id, "test:"+id, endpointID)
}

func TestAdminRecover(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	cut := time.Now().Add(-time.Hour)
	b.addDelivery(t, "old", e.ID, "failed", 6, cut.Add(-time.Minute))
	b.addDelivery(t, "f", e.ID, "failed", 6, cut.Add(time.Minute))
	b.addDelivery(t, "s", e.ID, "skipped", 0, cut.Add(2*time.Minute))
	b.addDelivery(t, "ok", e.ID, "delivered", 1, cut.Add(3*time.Minute))
	b.addTestSend(t, "t", e.ID) // never retried, so not recovered

	off, on := false, true
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Recover(ctx, e.ID, cut); !errors.Is(err, ErrEndpointInactive) {
		t.Errorf("recover while disabled: %v", err)
	}
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &on}); err != nil {
		t.Fatal(err)
	}
	n, err := a.Recover(ctx, e.ID, cut)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("recovered %d, want 2", n)
	}
	got := map[string]string{}
	rows, _ := b.pool.Query(ctx, `SELECT id, status || '/' || attempts FROM walhook.deliveries`)
	for rows.Next() {
		var id, s string
		rows.Scan(&id, &s)
		got[id] = s
	}
	want := map[string]string{"old": "failed/6", "f": "pending/0", "s": "pending/0", "ok": "delivered/1", "t": "failed/1"}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("%s: %s, want %s", id, got[id], w)
		}
	}
}

func TestAdminRotateSecret(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	secret, until, err := a.RotateSecret(ctx, e.ID, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeSecret(secret); err != nil || secret == e.Secret {
		t.Errorf("new secret %v (same as old: %v)", err, secret == e.Secret)
	}
	if d := time.Until(until); d < 119*time.Minute || d > 121*time.Minute {
		t.Errorf("previous valid until %v, want about 2h from now", until)
	}
	var cur, prev string
	if err := b.pool.QueryRow(ctx, `SELECT secret, previous_secret FROM walhook.endpoints WHERE id = $1`, e.ID).Scan(&cur, &prev); err != nil {
		t.Fatal(err)
	}
	if cur != secret || prev != e.Secret {
		t.Error("store does not hold the new secret and the old one as previous")
	}
	got, _ := a.GetEndpoint(ctx, e.ID)
	if !got.PreviousSecretUntil.Equal(until) {
		t.Errorf("endpoint previous until %v != %v", got.PreviousSecretUntil, until)
	}

	// No overlap: the old secret stops signing at once.
	if _, until, err = a.RotateSecret(ctx, e.ID, 0); err != nil || !until.IsZero() {
		t.Errorf("rotate without overlap: until %v, %v", until, err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.endpoints WHERE id = $1 AND previous_secret IS NULL AND previous_secret_until IS NULL`, e.ID); n != 1 {
		t.Error("previous secret kept without overlap")
	}
}

func TestAdminOutboxStatus(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	healthy := mustCreate(t, a, EndpointInput{})
	failing := mustCreate(t, a, EndpointInput{})
	disabled := mustCreate(t, a, EndpointInput{})
	b.exec(t, `UPDATE {{schema}}.endpoints SET failing_since = now() - interval '1 hour' WHERE id = $1`, failing.ID)
	b.exec(t, `UPDATE {{schema}}.endpoints SET active = false, disabled_reason = '410 Gone', disabled_at = now() WHERE id = $1`, disabled.ID)
	b.addDelivery(t, "p1", healthy.ID, "pending", 0, time.Now().Add(-10*time.Minute))
	b.addDelivery(t, "p2", failing.ID, "pending", 2, time.Now())
	b.addDelivery(t, "f1", failing.ID, "failed", 6, time.Now())
	b.addDelivery(t, "s1", disabled.ID, "skipped", 0, time.Now())
	b.addDelivery(t, "ok", healthy.ID, "delivered", 1, time.Now())
	// Two in flight: one leased, one whose claimer died (lease passed).
	b.addDelivery(t, "d1", healthy.ID, "delivering", 1, time.Now())
	b.addDelivery(t, "d2", healthy.ID, "delivering", 1, time.Now())
	b.exec(t, `UPDATE {{schema}}.deliveries SET locked_by = 'x', locked_until = now() + interval '1 minute' WHERE id = 'd1'`)
	b.exec(t, `UPDATE {{schema}}.deliveries SET locked_by = 'dead', locked_until = now() - interval '1 second' WHERE id = 'd2'`)

	s, err := a.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pending != 2 || s.Failing != 1 || s.Failed != 1 || s.Skipped != 1 || s.DeliveredLastMinute != 1 ||
		s.Delivering != 2 || s.AwaitingRescue != 1 {
		t.Errorf("status = %+v", s)
	}
	if s.OldestPendingAge < 9*time.Minute {
		t.Errorf("oldest pending age %v, want about 10m", s.OldestPendingAge)
	}
	if s.Endpoints.Healthy != 1 || len(s.Endpoints.Failing) != 1 || s.Endpoints.Failing[0].ID != failing.ID ||
		len(s.Endpoints.Disabled) != 1 || s.Endpoints.Disabled[0].Reason != "410 Gone" {
		t.Errorf("endpoints = %+v", s.Endpoints)
	}
}

// A status request counts the outbox every time while counting is cheap,
// so a change shows at once; once a count took statusReuseFrom or more
// (a backlog of hundreds of thousands) it is reused for 20 times what it
// took, its oldest pending age grown by the time since, and the endpoint
// list is read afresh.
func TestAdminOutboxStatusReusesACostlyCount(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	ep := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "p1", ep.ID, "pending", 0, time.Now().Add(-10*time.Minute))
	first, err := a.OutboxStatus(ctx)
	if err != nil || first.Pending != 1 {
		t.Fatalf("status = %+v, %v", first, err)
	}
	b.addDelivery(t, "p2", ep.ID, "pending", 0, time.Now())
	if s, _ := a.OutboxStatus(ctx); s.Pending != 2 {
		t.Fatalf("a cheap count was reused: pending %d, want 2", s.Pending)
	}

	// The last count took 200 ms: reused for 4 s.
	a.countsMu.Lock()
	a.countsRefresh = gaugeRefresh{at: time.Now().Add(-time.Second), took: 200 * time.Millisecond}
	a.countsMu.Unlock()
	b.addDelivery(t, "p3", ep.ID, "pending", 0, time.Now())
	mustCreate(t, a, EndpointInput{})
	s, err := a.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pending != 2 || s.Endpoints.Healthy != 2 {
		t.Errorf("a costly count was not reused, or the endpoints were not read afresh: pending %d, healthy %d; want 2 and 2", s.Pending, s.Endpoints.Healthy)
	}
	if s.OldestPendingAge < 10*time.Minute+time.Second {
		t.Errorf("reused oldest pending age %v, want it grown by the second since the count", s.OldestPendingAge)
	}
	// 4 s after it, counted again.
	a.countsMu.Lock()
	a.countsRefresh.at = time.Now().Add(-4 * time.Second)
	a.countsMu.Unlock()
	if s, _ := a.OutboxStatus(ctx); s.Pending != 3 {
		t.Errorf("a count older than 20 times its cost was reused: pending %d, want 3", s.Pending)
	}
}

// A re-enable while the disable's skip is under way waits for the batch
// in progress and stops the rest: Recover right after it finds what was
// skipped, and nothing is skipped behind the re-enabled endpoint's back.
func TestAdminReenableDuringTheSkip(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	since := time.Now().Add(-time.Hour)
	for i := range 5 {
		b.addDelivery(t, fmt.Sprintf("d%d", i), e.ID, "pending", 0, time.Now())
	}
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, q(`SELECT FROM {{schema}}.deliveries WHERE id = 'd0' FOR UPDATE`)); err != nil {
		t.Fatal(err)
	}
	disabled := make(chan error, 1)
	go func() { disabled <- b.d.disable(ctx, e.ID, "test") }()
	waitForLockWait(t, b.pool, "status = 'skipped'", nil)
	active := true
	enabled := make(chan error, 1)
	go func() {
		_, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &active})
		enabled <- err
	}()
	waitForLockWait(t, b.pool, "pg_advisory_xact_lock", nil)
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-enabled; err != nil {
		t.Fatal(err)
	}
	n, err := a.Recover(ctx, e.ID, since)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-disabled; err != nil {
		t.Fatal(err)
	}
	if p := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE status = 'pending'`); n != 5 || p != 5 {
		t.Fatalf("recovered %d, %d pending after the re-enable; want 5 and 5", n, p)
	}
}

// Deleting an endpoint changes only the endpoint in its transaction, so an
// outcome transaction that holds one of its deliveries and then updates
// the endpoint cannot deadlock with it (the old delete locked the
// endpoint, then the deliveries); the history goes after it. What an interrupted delete
// leaves is finished by maintenance, and a static endpoint configured
// again keeps its history.
func TestAdminDeleteLeavesATombstone(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "d1", e.ID, "delivering", 1, time.Now())
	b.addDelivery(t, "d2", e.ID, "pending", 0, time.Now())
	// An outcome transaction has written delivery d1 and will update the
	// endpoint's health next: the order the recorder locks in.
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, q(`UPDATE {{schema}}.deliveries SET last_error = 'x' WHERE id = 'd1'`)); err != nil {
		t.Fatal(err)
	}
	// The delete waits for nothing the outcome holds: the endpoint goes,
	// its history but d1 with it, and the tombstone stays for d1.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.DeleteEndpoint(dctx, e.ID); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.endpoints WHERE id = $1`, e.ID); n != 0 {
		t.Fatal("the endpoint is still there after its delete")
	}
	if n, m := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = $1`, e.ID),
		b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 1 || m != 1 {
		t.Fatalf("%d deliveries and %d tombstones left beside the outcome, want d1 and its tombstone", n, m)
	}
	if _, err := holder.Exec(ctx, q(`UPDATE {{schema}}.endpoints SET last_attempt_at = now() WHERE id = $1`), e.ID); err != nil {
		t.Fatalf("the outcome's endpoint update: %v", err)
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.d.purgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = $1`, e.ID) +
		b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 0 {
		t.Fatalf("%d deliveries and tombstones left after maintenance", n)
	}

	// A delete cut short after its commit: maintenance finishes it.
	b.addDelivery(t, "o1", "whk_gone", "pending", 0, time.Now())
	b.exec(t, `INSERT INTO {{schema}}.attempts (delivery_id, attempt, started_at, duration_ms) VALUES ('o1', 1, now(), 5)`)
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id) VALUES ('whk_gone')`)
	if err := b.d.purgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries`) + b.count(t, `SELECT count(*) FROM {{schema}}.attempts`) +
		b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 0 {
		t.Fatalf("%d rows left after maintenance", n)
	}

	// A static endpoint removed from the config and put back before its
	// history was deleted keeps it.
	st := []StaticEndpoint{{Name: "s", URL: "http://127.0.0.1:1/", Secret: NewSecret()}}
	if err := b.d.SyncStaticEndpoints(ctx, st); err != nil {
		t.Fatal(err)
	}
	b.addDelivery(t, "s1", "static:s", "delivered", 1, time.Now())
	b.exec(t, `DELETE FROM {{schema}}.endpoints WHERE id = 'static:s'`)
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id) VALUES ('static:s')`)
	if err := b.d.SyncStaticEndpoints(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := b.d.purgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = 'static:s'`); n != 1 {
		t.Fatalf("the static endpoint configured again has %d deliveries, want its 1", n)
	}
}

// q fills in the test store's schema.
func q(sql string) string { return strings.ReplaceAll(sql, "{{schema}}", "walhook") }

// otherProcess runs a second dispatcher on b's store, stopped at the
// test's end, with a wait for what it should hear.
func otherProcess(t *testing.T, b *adminBundle) (*Dispatcher, func(what string, cond func() bool)) {
	t.Helper()
	other, err := New(b.pool, Options{Schema: "walhook", PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- other.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return other, func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("the other process never heard that %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Disabling or deleting an endpoint through one process reaches the other
// processes on the store (their LISTEN connection): each drops the
// deliveries to it that it holds and has not started.
func TestEndpointOffReachesOtherProcesses(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	other, waitFor := otherProcess(t, b)
	// The other process listens once LISTEN is in place: a first change
	// may go unheard, so wait for it with a probe endpoint.
	probe := mustCreate(t, a, EndpointInput{})
	off := false
	waitFor("the probe was disabled", func() bool {
		if _, err := a.UpdateEndpoint(ctx, probe.ID, EndpointPatch{Active: &off}); err != nil {
			t.Fatal(err)
		}
		return other.disabledSince(probe.ID, time.Time{})
	})

	t0 := time.Now()
	e := mustCreate(t, a, EndpointInput{})
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Active: &off}); err != nil {
		t.Fatal(err)
	}
	waitFor("an endpoint was disabled", func() bool { return other.disabledSince(e.ID, t0) })
	t1 := time.Now()
	gone := mustCreate(t, a, EndpointInput{})
	if err := a.DeleteEndpoint(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	waitFor("an endpoint was deleted", func() bool { return other.disabledSince(gone.ID, t1) })
}

// A config that drops static endpoint a and keeps b, synced while another
// process's recorder holds a and is about to update b (its rows in id
// order): the sync takes every row it changes in id order before changing
// any, so it waits for the recorder instead of deadlocking with it.
func TestSyncStaticEndpointsWaitsForTheRecorder(t *testing.T) {
	_, b := setupAdmin(t)
	ctx := context.Background()
	ep := func(name string) StaticEndpoint {
		return StaticEndpoint{Name: name, URL: "http://127.0.0.1:1/", Secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}
	}
	if err := b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{ep("a"), ep("b")}); err != nil {
		t.Fatal(err)
	}
	rec, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Rollback(ctx)
	if _, err := rec.Exec(ctx, q(`UPDATE {{schema}}.endpoints SET last_attempt_at = now() WHERE id = 'static:a'`)); err != nil {
		t.Fatal(err)
	}
	synced := make(chan error, 1)
	go func() { synced <- b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{ep("b")}) }()
	waitForLockWait(t, b.pool, "FOR UPDATE", nil)
	if _, err := rec.Exec(ctx, q(`UPDATE {{schema}}.endpoints SET last_attempt_at = now() WHERE id = 'static:b'`)); err != nil {
		t.Fatalf("the recorder's second update: %v", err)
	}
	if err := rec.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-synced; err != nil {
		t.Fatalf("sync: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.endpoints`); n != 1 {
		t.Fatalf("%d endpoints after the sync, want b only", n)
	}
}

// Notes of disabled endpoints older than two leases are dropped, so
// deleted endpoints do not pile up in a long-running process.
func TestDisabledNotesArePruned(t *testing.T) {
	t.Parallel()
	d, _ := obSetup(t, func(o *Options) { o.Lease = time.Second })
	d.disabled.Store("old", time.Now().Add(-time.Hour))
	d.disabled.Store("recent", time.Now())
	for i := range 64 {
		d.noteDisabled(fmt.Sprintf("e%d", i))
	}
	if _, ok := d.disabled.Load("old"); ok {
		t.Fatal("a note an hour old was kept")
	}
	if !d.disabledSince("recent", time.Now().Add(-time.Minute)) || !d.disabledSince("e0", time.Now().Add(-time.Minute)) {
		t.Fatal("a recent note was dropped")
	}
}

// A deleted endpoint's history goes in batches that continue from where
// the one before stopped (ties on created_at included), within the budget
// given, and the tombstone goes with the last of it.
func TestPurgeDeletedInBatches(t *testing.T) {
	_, b := setupAdmin(t)
	ctx := context.Background()
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at)
		SELECT 'd' || i, 'e' || i, 'whk_gone', 'a.b', 'delivered', 1,
		       CASE WHEN i <= 1200 THEN timestamptz '2026-01-01' ELSE timestamptz '2026-01-01' + i * interval '1 second' END
		FROM generate_series(1, 2500) i`)
	b.exec(t, `INSERT INTO {{schema}}.attempts (delivery_id, attempt, started_at, duration_ms) SELECT 'd' || i, 1, now(), 1 FROM generate_series(1, 2500) i`)
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts) VALUES ('keep', 'e', 'whk_other', 'a.b', 'pending', 0)`)
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id) VALUES ('whk_gone')`)
	done, err := b.d.purgeDeleted(ctx, "whk_gone", 1500)
	if err != nil || done {
		t.Fatalf("purge with a budget of 1,500 = done %v, %v; want not done", done, err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = 'whk_gone'`); n != 500 {
		t.Fatalf("%d deliveries left after two batches, want 500", n)
	}
	if done, err = b.d.purgeDeleted(ctx, "whk_gone", 100000); err != nil || !done {
		t.Fatalf("purge = done %v, %v; want done", done, err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = 'whk_gone'`) +
		b.count(t, `SELECT count(*) FROM {{schema}}.attempts`) + b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 0 {
		t.Fatalf("%d deliveries, attempts and tombstones left", n)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries`); n != 1 {
		t.Fatalf("another endpoint's delivery was deleted")
	}
}

// A purge passes over a delivery another transaction holds (an outcome
// being recorded, a release, the rescue) instead of waiting for it, in an
// order of its own that could deadlock with a statement changing several:
// it deletes the rest, keeps the tombstone, and a later pass finishes.
func TestPurgeDeletedPassesOverHeldRows(t *testing.T) {
	_, b := setupAdmin(t)
	ctx := context.Background()
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts)
		SELECT 'd' || i, 'e' || i, 'whk_gone', 'a.b', 'delivering', 1 FROM generate_series(1, 300) i`)
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id) VALUES ('whk_gone')`)
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id IN ('d7', 'd150') FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done, err := b.d.purgeDeleted(pctx, "whk_gone", 100000)
	if err != nil || done {
		t.Fatalf("purge beside two held rows = done %v, %v; want not done, no error (it waited for them before)", done, err)
	}
	if n, m := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries`), b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 2 || m != 1 {
		t.Fatalf("%d deliveries and %d tombstones left, want the 2 held rows and the tombstone", n, m)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.d.purgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	if n, m := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries`), b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 0 || m != 0 {
		t.Fatalf("%d deliveries and %d tombstones left after the next pass", n, m)
	}
}

// Two purges of one endpoint at once (the API's and maintenance's): the
// one that finds the rows it waited for gone keeps the tombstone while
// rows are left, so nothing is orphaned.
func TestConcurrentPurgesLeaveNothing(t *testing.T) {
	_, b := setupAdmin(t)
	ctx := context.Background()
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts)
		SELECT 'd' || i, 'e' || i, 'whk_gone', 'a.b', 'pending', 0 FROM generate_series(1, 5000) i`)
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id) VALUES ('whk_gone')`)
	errs := make(chan error, 2)
	for range 2 {
		go func() { _, err := b.d.purgeDeleted(ctx, "whk_gone", 100000); errs <- err }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := b.d.purgeTombstones(ctx); err != nil {
		t.Fatal(err)
	}
	if n, m := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries`), b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted`); n != 0 || m != 0 {
		t.Fatalf("%d deliveries and %d tombstones left", n, m)
	}
}

// A schema name near PostgreSQL's 63-byte limit still gets a channel
// pg_notify takes.
func TestWakeChannelOfALongSchema(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	long := strings.Repeat("s", 63)
	for _, schema := range []string{"walhook", long} {
		c := wakeChannel(schema)
		if len(c) > 63 || c != wakeChannel(schema) {
			t.Fatalf("channel of %q = %q", schema, c)
		}
		if _, err := b.pool.Exec(context.Background(), `SELECT pg_notify($1, '')`, c); err != nil {
			t.Fatalf("pg_notify on the channel of %q: %v", schema, err)
		}
	}
	if d.channel != "walhook_wake" {
		t.Fatalf("channel %q, want walhook_wake (unchanged for short names)", d.channel)
	}
}

// A URL or secret changed by one process (the API's PUT and rotate, a
// static endpoint's new URL or secret in the config of a process that
// starts) reaches the other processes on the store, which then hand back
// the deliveries to it they hold unstarted (see TestHeldDeliveryAfterRotate
// and TestHeldDeliveryAfterURLChange for this process's own).
func TestEndpointChangeReachesOtherProcesses(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	other, waitFor := otherProcess(t, b)
	// As in TestEndpointOffReachesOtherProcesses: wait for LISTEN with a probe.
	probe := mustCreate(t, a, EndpointInput{})
	waitFor("the probe's secret was rotated", func() bool {
		if _, _, err := a.RotateSecret(ctx, probe.ID, 0); err != nil {
			t.Fatal(err)
		}
		return other.changedSince(probe.ID, time.Time{})
	})

	t0 := time.Now()
	e := mustCreate(t, a, EndpointInput{})
	if other.changedSince(e.ID, t0) {
		t.Fatal("a new endpoint counts as changed")
	}
	url := "https://hooks.example.com/moved"
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{URL: &url}); err != nil {
		t.Fatal(err)
	}
	waitFor("a URL changed", func() bool { return other.changedSince(e.ID, t0) })
	t1 := time.Now()
	desc := "only the description"
	if _, err := a.UpdateEndpoint(ctx, e.ID, EndpointPatch{Description: &desc}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.RotateSecret(ctx, e.ID, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor("a secret was rotated", func() bool { return other.changedSince(e.ID, t1) })

	static := func(url string) []StaticEndpoint {
		return []StaticEndpoint{{Name: "s", URL: url, Secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}}
	}
	if err := b.d.SyncStaticEndpoints(ctx, static("https://hooks.example.com/a")); err != nil {
		t.Fatal(err)
	}
	t2 := time.Now()
	if err := b.d.SyncStaticEndpoints(ctx, static("https://hooks.example.com/a")); err != nil {
		t.Fatal(err)
	}
	if err := b.d.SyncStaticEndpoints(ctx, static("https://hooks.example.com/b")); err != nil {
		t.Fatal(err)
	}
	waitFor("a static endpoint's URL changed", func() bool { return other.changedSince(StaticPrefix+"s", t2) })
}

// A deleted endpoint's history is gone for the API as soon as the delete
// returns, even while the purge of a large one is still under way (or
// left to maintenance): a delivery of it is not found by id, as it is not
// listed.
func TestAdminGetDeliveryOfADeletedEndpoint(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "kept", e.ID, "failed", 6, time.Now())
	if _, _, err := a.GetDelivery(ctx, "kept"); err != nil {
		t.Fatalf("delivery of an existing endpoint: %v", err)
	}
	// What a delete cut short after its commit leaves for maintenance.
	b.addDelivery(t, "o1", "whk_gone", "failed", 6, time.Now())
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id) VALUES ('whk_gone')`)
	if _, _, err := a.GetDelivery(ctx, "o1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delivery of a deleted endpoint: %v, want ErrNotFound", err)
	}
}

// A static endpoint that failed, was turned off in the config and is
// turned on again there starts afresh, as one re-enabled through the API
// does: the status listed it as failing since before it was turned off,
// with no attempt made since, and the disable rule counted its window
// from then.
func TestStaticEndpointEnabledAgainIsNotFailing(t *testing.T) {
	ctx := context.Background()
	a, b := setupAdmin(t)
	ep := StaticEndpoint{Name: "ops", URL: "https://example.com/ops", Secret: NewSecret()}
	if err := b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{ep}); err != nil {
		t.Fatal(err)
	}
	// It has failed for two days (as a failed attempt records it).
	b.exec(t, `UPDATE {{schema}}.endpoints SET failing_since = now() - interval '2 days', last_attempt_at = now() - interval '1 day' WHERE id = 'static:ops'`)
	ep.Disabled = true
	if err := b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{ep}); err != nil {
		t.Fatal(err)
	}
	ep.Disabled = false
	if err := b.d.SyncStaticEndpoints(ctx, []StaticEndpoint{ep}); err != nil {
		t.Fatal(err)
	}
	st, err := a.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Endpoints.Healthy != 1 || len(st.Endpoints.Failing) != 0 || len(st.Endpoints.Disabled) != 0 {
		t.Fatalf("endpoints %+v after the config turned it on again: want it healthy until it fails again", st.Endpoints)
	}
}

// The deliveries of a deleted endpoint are never sent; a large backlog is
// deleted over several maintenance passes (tombstonePass rows each), and
// until then the status and the outbox gauges counted it as pending, its
// oldest as the outbox's oldest: an alert on the backlog or its age fired
// for minutes after the endpoint was deleted.
func TestStatusLeavesOutADeletedEndpointsBacklog(t *testing.T) {
	ctx := context.Background()
	a, b := setupAdmin(t)
	gone := mustCreate(t, a, EndpointInput{Events: []string{"auction.bid"}})
	kept := mustCreate(t, a, EndpointInput{URL: "https://example.com/kept", Events: []string{"auction.bid"}})
	b.exec(t, `INSERT INTO {{schema}}.events (id, type, envelope, occurred_at, data)
		SELECT 'ev-' || i, 'auction.bid', 'sns', now() - interval '1 hour', '{"bid":1}' FROM generate_series(1, $1) i`, tombstonePass+500)
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts, created_at, updated_at, next_attempt_at)
		SELECT 'd-' || i, 'ev-' || i, $1, 'auction.bid', 'pending', 0, now() - interval '1 hour', now(), now() + interval '1 hour'
		FROM generate_series(1, $2) i`, gone.ID, tombstonePass+500)
	b.addDelivery(t, "k1", kept.ID, "pending", 0, time.Now().Add(-time.Minute))
	if err := a.DeleteEndpoint(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = $1`, gone.ID); n == 0 {
		t.Fatal("the delete left nothing for maintenance: the backlog is too small for this test")
	}

	st, err := a.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 1 || st.OldestPendingAge > 30*time.Minute {
		t.Errorf("status: %d pending, oldest %s; want the kept endpoint's 1, a minute old", st.Pending, st.OldestPendingAge)
	}
	if err := b.d.updateGauges(ctx); err != nil {
		t.Fatal(err)
	}
	if p, age := testutil.ToFloat64(b.d.metrics.pending), testutil.ToFloat64(b.d.metrics.oldestPending); p != 1 || age > 1800 {
		t.Errorf("walhook_outbox_pending %v, walhook_outbox_oldest_pending_seconds %v; want 1, about 60", p, age)
	}
}

// A status request waiting for another one's count (one count runs at a
// time) still ends at its own deadline: with the store stalled, requests
// queued behind a stuck count must not each wait for the ones before
// them (the API gives every status request 5 s).
func TestAdminOutboxStatusWaitEndsWithItsContext(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `LOCK TABLE walhook.deliveries IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err := a.OutboxStatus(fctx)
		first <- err
	}()
	waitForLockWait(t, b.pool, "AS failing", nil)
	second := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := a.OutboxStatus(sctx)
		second <- err
	}()
	waited := false
	select {
	case err := <-second:
		if err == nil {
			t.Error("a status request past its deadline returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Error("a status request waiting for another's count outlived its 300 ms deadline by 5 s")
		waited = true
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("the first count, once the lock went: %v", err)
	}
	if waited {
		<-second
	}
}

// A deleted endpoint whose history another transaction holds a row of
// (an outcome being recorded) is left for the next pass; the pass goes on
// to the other tombstones instead of stopping there.
func TestPurgeTombstonesGoesPastOneWithHeldRows(t *testing.T) {
	_, b := setupAdmin(t)
	ctx := context.Background()
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts)
		SELECT 'a' || i, 'e' || i, 'whk_first', 'a.b', 'delivering', 1 FROM generate_series(1, 3) i`)
	b.exec(t, `INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts)
		SELECT 'b' || i, 'e' || i, 'whk_second', 'a.b', 'failed', 1 FROM generate_series(1, 3) i`)
	b.exec(t, `INSERT INTO {{schema}}.endpoints_deleted (id, deleted_at) VALUES ('whk_first', now() - interval '1 minute'), ('whk_second', now())`)
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `SELECT FROM walhook.deliveries WHERE id = 'a2' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.d.purgeTombstones(pctx); err != nil {
		t.Fatal(err)
	}
	if n, m := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = 'whk_second'`),
		b.count(t, `SELECT count(*) FROM {{schema}}.endpoints_deleted WHERE id = 'whk_second'`); n != 0 || m != 0 {
		t.Errorf("%d deliveries and %d tombstones of the second deleted endpoint left: the pass stopped at the first one's held row", n, m)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.deliveries WHERE endpoint_id = 'whk_first'`); n != 1 {
		t.Errorf("%d deliveries of the first deleted endpoint left, want the held one", n)
	}
}

// With tens of millions pending, counting the outbox takes longer than a
// status request waits (its 5 s). The count goes on past the request
// that started it: that request says so, and the next one gets the
// count; once there are counts, a request whose count outlives it gets
// the last ones instead of an error. A table lock held by another
// transaction stands in for the long count.
func TestAdminOutboxStatusCountOutlivesTheRequest(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	ep := mustCreate(t, a, EndpointInput{})
	b.addDelivery(t, "p1", ep.ID, "pending", 0, time.Now().Add(-10*time.Minute))
	b.addDelivery(t, "p2", ep.ID, "pending", 0, time.Now())
	lockDeliveries := func() pgx.Tx {
		holder, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { holder.Rollback(ctx) })
		if _, err := holder.Exec(ctx, `LOCK TABLE walhook.deliveries IN ACCESS EXCLUSIVE MODE`); err != nil {
			t.Fatal(err)
		}
		return holder
	}
	short := func() (OutboxStatus, error) {
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		return a.OutboxStatus(sctx)
	}

	holder := lockDeliveries()
	if _, err := short(); !errors.Is(err, ErrStillCounting) {
		t.Fatalf("a first count that outlived its request: %v, want ErrStillCounting", err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The count the first request started ends; the next request gets it
	// (it took the lock's wait, so it is reused, not counted again).
	s, err := a.OutboxStatus(ctx)
	if err != nil || s.Pending != 2 {
		t.Fatalf("status after the lock went = %+v, %v; want 2 pending", s, err)
	}
	a.countsMu.Lock()
	took := a.countsRefresh.took
	a.countsMu.Unlock()
	if took < 200*time.Millisecond {
		t.Errorf("the count took %v, want it to include the lock's wait (most of the first request's 300 ms)", took)
	}

	// Counts due again, more pending, and the count outlives its request:
	// the last counts, their oldest age grown.
	a.countsMu.Lock()
	a.countsRefresh.at = time.Now().Add(-time.Hour)
	a.countsMu.Unlock()
	b.addDelivery(t, "p3", ep.ID, "pending", 0, time.Now())
	holder = lockDeliveries()
	s, err = short()
	if err != nil || s.Pending != 2 || s.OldestPendingAge < time.Hour {
		t.Fatalf("status while a due count waits = %+v, %v; want the last counts (2 pending, oldest over an hour)", s, err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := a.OutboxStatus(ctx)
		if err == nil && s.Pending == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the lock went: status = %+v, %v; want 3 pending", s, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close ends a count under way (walhook run stops while a count of
// millions is running), so the pool's close does not wait for it.
func TestAdminCloseEndsACount(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	holder, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `LOCK TABLE walhook.deliveries IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := a.OutboxStatus(sctx); !errors.Is(err, ErrStillCounting) {
		t.Fatalf("status = %v, want ErrStillCounting", err)
	}
	a.countsMu.Lock()
	run := a.counting
	a.countsMu.Unlock()
	if run == nil {
		t.Fatal("no count under way")
	}
	a.Close()
	select {
	case <-run.done:
		if run.err == nil {
			t.Error("a count ended by Close reported no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the count under way did not end 10 s after Close")
	}
}
