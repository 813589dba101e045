package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/mapper"
)

func TestAppendIdempotentOnReplay(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	b.endpoint(t, "whk_a", "https://a.example/hook", nil, nil, true)
	b.endpoint(t, "whk_b", "https://b.example/hook", nil, nil, true)
	evs := []mapper.Event{obEvent("problem.created", "A1"), obEvent("problem.closed", "A1")}

	obAppend(t, d, 100, evs...)
	ids := obDeliveryIDs(t, b)
	if len(ids) != 4 {
		t.Fatalf("got %d deliveries, want 2 events × 2 endpoints", len(ids))
	}
	for _, e := range evs {
		for _, ep := range []string{"whk_a", "whk_b"} {
			if !slices.Contains(ids, mapper.DeliveryID(e.Envelope, e.ID, ep)) {
				t.Errorf("delivery of %s to %s missing or with another id", e.ID, ep)
			}
		}
	}

	// A replay after a crash resends the same transaction.
	obAppend(t, d, 100, evs...)
	if got := obDeliveryIDs(t, b); !slices.Equal(got, ids) {
		t.Fatalf("replay changed deliveries: %v, want %v", got, ids)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.events`); n != 2 {
		t.Fatalf("replay: %d events, want 2", n)
	}
	// Data bytes are kept exactly (json, not jsonb: key order and spacing).
	var data string
	if err := b.pool.QueryRow(context.Background(), `SELECT data::text FROM walhook.events WHERE id = $1`, evs[0].ID).Scan(&data); err != nil {
		t.Fatal(err)
	}
	if data != string(evs[0].Data) {
		t.Fatalf("stored data %s, want %s", data, evs[0].Data)
	}
}

func obDeliveryIDs(t testing.TB, b *obBundle) []string {
	t.Helper()
	rows, err := b.pool.Query(context.Background(), `SELECT id FROM walhook.deliveries ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestAppendCursorNeverGoesBack(t *testing.T) {
	t.Parallel()
	d, _ := obSetup(t, nil)
	ctx := context.Background()
	if _, _, ok, err := d.Cursor(ctx, "slot"); ok || err != nil {
		t.Fatalf("Cursor before any Append: ok=%v err=%v, want not ok", ok, err)
	}
	obAppend(t, d, 0x2000)
	lsn, sys, ok, err := d.Cursor(ctx, "slot")
	if err != nil || !ok || lsn != 0x2000 || sys != "sys" {
		t.Fatalf("Cursor = %v %q %v %v, want 0/2000 sys", lsn, sys, ok, err)
	}
	// An older position (a replayed batch) does not move it back.
	obAppend(t, d, 0x1000, obEvent("a.b", ""))
	if lsn, _, _, _ := d.Cursor(ctx, "slot"); lsn != 0x2000 {
		t.Fatalf("cursor went back to %v", lsn)
	}
	// A non-final chunk stores events but does not move the cursor; the
	// highest Final EndLSN of a batch wins.
	err = d.Append(ctx, "slot", "sys", []TxEvents{
		{Xid: 9, CommitLSN: 0x5000, Events: []mapper.Event{obEvent("a.b", "")}},
		{Xid: 8, CommitLSN: 0x2900, EndLSN: 0x3000, Final: true},
		{Xid: 10, CommitLSN: 0x2990, EndLSN: 0x2A00, Final: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if lsn, _, _, _ := d.Cursor(ctx, "slot"); lsn != 0x3000 {
		t.Fatalf("cursor = %v, want 0/3000", lsn)
	}
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 11, CommitLSN: 0x6000, Events: []mapper.Event{obEvent("a.b", "")}}}); err != nil {
		t.Fatal(err)
	}
	if lsn, _, _, _ := d.Cursor(ctx, "slot"); lsn != 0x3000 {
		t.Fatalf("non-final chunk moved the cursor to %v", lsn)
	}
	// Cursors are per slot.
	if _, _, ok, _ := d.Cursor(ctx, "other"); ok {
		t.Fatal("another slot has a cursor")
	}
}

func TestAppendFanOutFilters(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	b.endpoint(t, "all", "https://x.example/", nil, nil, true)
	b.endpoint(t, "exact", "https://x.example/", []string{"problem.created"}, nil, true)
	b.endpoint(t, "prefix", "https://x.example/", []string{"submission.*"}, nil, true)
	b.endpoint(t, "auction", "https://x.example/", nil, []string{"A1"}, true)
	b.endpoint(t, "both", "https://x.example/", []string{"problem.*"}, []string{"A2"}, true)
	b.endpoint(t, "off", "https://x.example/", nil, nil, false)

	evs := map[string]mapper.Event{
		"pc-A1": obEvent("problem.created", "A1"),
		"pc-A2": obEvent("problem.created", "A2"),
		"sa-A1": obEvent("submission.approved", "A1"),
		"sub":   obEvent("submissions.x", "A3"), // "submission.*" must not match "submissions."
		"none":  obEvent("member.joined", ""),
	}
	var all []mapper.Event
	for _, e := range evs {
		all = append(all, e)
	}
	obAppend(t, d, 10, all...)

	want := map[string][]string{
		"pc-A1": {"all", "auction", "exact", "off"},
		"pc-A2": {"all", "both", "exact", "off"},
		"sa-A1": {"all", "auction", "off", "prefix"},
		"sub":   {"all", "off"},
		"none":  {"all", "off"},
	}
	for k, e := range evs {
		rows, err := b.pool.Query(context.Background(), `SELECT endpoint_id, status FROM walhook.deliveries WHERE event_id = $1 ORDER BY endpoint_id`, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var ep, status string
			if err := rows.Scan(&ep, &status); err != nil {
				t.Fatal(err)
			}
			got = append(got, ep)
			if wantStatus := map[bool]string{true: "skipped", false: "pending"}[ep == "off"]; status != wantStatus {
				t.Errorf("%s → %s: status %s, want %s", k, ep, status, wantStatus)
			}
		}
		if !slices.Equal(got, want[k]) {
			t.Errorf("%s (%s, auction %q) fanned out to %v, want %v", k, e.Type, e.AuctionID, got, want[k])
		}
	}
}

func TestMatchEvent(t *testing.T) {
	for _, c := range []struct {
		filters []string
		typ     string
		want    bool
	}{
		{nil, "a.b", true},
		{[]string{"a.b"}, "a.b", true},
		{[]string{"a.b"}, "a.bc", false},
		{[]string{"a.*"}, "a.b", true},
		{[]string{"a.*"}, "a.b.c", true},
		{[]string{"a.*"}, "ab.c", false},
		{[]string{"a.*"}, "a", false},
		{[]string{"*"}, "x.y", true},
		{[]string{"x.y", "a.*"}, "a.z", true},
	} {
		if got := matchEvent(c.filters, c.typ); got != c.want {
			t.Errorf("matchEvent(%v, %q) = %v, want %v", c.filters, c.typ, got, c.want)
		}
	}
}

// An endpoint deleted by another process while Append runs must neither
// fail the Append (foreign key) nor be fanned out to after its delete
// committed.
func TestAppendSeesEndpointChangesOfOtherProcesses(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	b.endpoint(t, "e1", "https://x.example/", nil, nil, true)
	obAppend(t, d, 10, obEvent("a.b", ""))
	// Another process disables e1 and adds e2.
	ctx := context.Background()
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET active = false WHERE id = 'e1'`); err != nil {
		t.Fatal(err)
	}
	b.endpoint(t, "e2", "https://x.example/", nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 20, ev)
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1 AND endpoint_id = 'e1' AND status = 'skipped'`, ev.ID); n != 1 {
		t.Fatalf("disabled e1: %d skipped deliveries, want 1", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1 AND endpoint_id = 'e2' AND status = 'pending'`, ev.ID); n != 1 {
		t.Fatalf("new e2: %d pending deliveries, want 1", n)
	}
	if _, err := b.pool.Exec(ctx, `DELETE FROM walhook.endpoints WHERE id = 'e2'`); err != nil {
		t.Fatal(err)
	}
	ev = obEvent("a.b", "")
	obAppend(t, d, 30, ev)
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1`, ev.ID); n != 1 {
		t.Fatalf("after delete: %d deliveries, want only e1's", n)
	}
}

func TestAppendCancelledContextStoresNothing(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := d.Append(ctx, "slot", "sys", []TxEvents{{Final: true, EndLSN: 5, Events: []mapper.Event{obEvent("a.b", "")}}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context = %v, want context.Canceled", err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.events`); n != 0 {
		t.Fatalf("%d events stored by a failed Append", n)
	}
}

func TestSyncStaticEndpoints(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	one := StaticEndpoint{Name: "one", URL: "https://one.example/hook", Secret: obSecret, Events: []string{"a.*"}}
	two := StaticEndpoint{Name: "two", URL: "https://two.example/hook", Secret: obSecret, Disabled: true}
	if err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{one, two}); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE static AND id IN ('static:one', 'static:two')`); n != 2 {
		t.Fatalf("%d static endpoints, want 2", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = 'static:two' AND NOT active AND disabled_reason IS NOT NULL`); n != 1 {
		t.Fatal("static:two is not disabled with a reason")
	}
	b.endpoint(t, "whk_api", "https://api.example/", nil, nil, true)

	// The runtime disables one; a restart with the same config keeps it
	// disabled. two is enabled by the config; one's secret changes.
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET active = false, disabled_reason = '410' WHERE id = 'static:one'`); err != nil {
		t.Fatal(err)
	}
	two.Disabled = false
	newSecret := NewSecret()
	one.Secret = newSecret
	if err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{one, two}); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = 'static:one' AND NOT active AND disabled_reason = '410'
		AND secret = $1 AND previous_secret = $2 AND previous_secret_until > now()`, newSecret, obSecret); n != 1 {
		t.Fatal("static:one: want still disabled by the runtime, new secret, old one signing for the overlap")
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = 'static:two' AND active AND disabled_reason IS NULL`); n != 1 {
		t.Fatal("static:two not re-enabled by the config")
	}

	// Dropped from the config: deleted with its deliveries and their
	// attempts; API endpoints and their deliveries untouched.
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET active = true WHERE id = 'static:one'`); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration_ms)
		SELECT id, 1, now(), 1 FROM walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'static:one'`); n != 1 {
		t.Fatalf("static:one has %d deliveries before it is dropped, want 1", n)
	}
	if err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{two}); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints`); n != 2 {
		t.Fatalf("%d endpoints after dropping one, want static:two and whk_api", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'static:one'`); n != 0 {
		t.Errorf("%d deliveries of the dropped endpoint left", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.attempts a WHERE NOT EXISTS
		(SELECT 1 FROM walhook.deliveries x WHERE x.id = a.delivery_id)`); n != 0 {
		t.Errorf("%d attempts of deleted deliveries left", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'whk_api'`); n != 1 {
		t.Errorf("whk_api has %d deliveries after another endpoint was dropped, want 1", n)
	}

	for _, bad := range []struct {
		ep   StaticEndpoint
		want string
	}{
		{StaticEndpoint{Name: "x", URL: "https://x.example/", Secret: "nope"}, "secret"},
		{StaticEndpoint{Name: "x", URL: "ftp://x.example/", Secret: obSecret}, "url"},
		{StaticEndpoint{URL: "https://x.example/", Secret: obSecret}, "without a name"},
	} {
		err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{bad.ep})
		if err == nil || !containsFold(err.Error(), bad.want) {
			t.Errorf("SyncStaticEndpoints(%+v) = %v, want an error about %s", bad.ep.Name, err, bad.want)
		}
	}
	if err := d.SyncStaticEndpoints(ctx, []StaticEndpoint{two, two}); err == nil {
		t.Error("duplicate static endpoint names accepted")
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints`); n != 2 {
		t.Fatal("a refused sync changed the endpoints")
	}
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// The fan-out keeps the endpoints between appends while endpoints_version
// stays (migration 007): what the recorder writes (failure state, last
// success) keeps it, any change the fan-out depends on moves it, and a
// previous secret's overlap is judged at each append, not when the rows
// were read.
func TestAppendEndpointCache(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	b.endpoint(t, "e1", "https://x.example/", nil, nil, true)
	exec := func(sql string) {
		t.Helper()
		if _, err := b.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	fanout := func() ([]fanoutEndpoint, time.Time) {
		t.Helper()
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		eps, now, err := d.fanoutEndpoints(ctx, tx.Conn(), false)
		if err != nil {
			t.Fatal(err)
		}
		return eps, now
	}
	first, _ := fanout()
	exec(`UPDATE walhook.endpoints SET failing_since = now(), last_attempt_at = now()`)
	exec(`UPDATE walhook.endpoints SET failing_since = NULL, last_success_at = now(), url = url`)
	if again, _ := fanout(); &again[0] != &first[0] {
		t.Fatal("the endpoints were read again after a change the fan-out does not depend on")
	}
	for _, change := range []string{
		`UPDATE walhook.endpoints SET url = 'https://y.example/'`,
		`UPDATE walhook.endpoints SET events = '{a.*}'`,
		`UPDATE walhook.endpoints SET auctions = '{A1}'`,
		`UPDATE walhook.endpoints SET active = false`,
		`UPDATE walhook.endpoints SET active = true, previous_secret = secret, secret = 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD',
			previous_secret_until = now() + interval '1 hour'`,
		`UPDATE walhook.endpoints SET previous_secret_until = now() - interval '1 second'`,
		`INSERT INTO walhook.endpoints (id, url, secret) VALUES ('e2', 'https://z.example/', 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD')`,
		`DELETE FROM walhook.endpoints WHERE id = 'e2'`,
		`TRUNCATE walhook.endpoints`,
	} {
		before, _ := fanout()
		exec(change)
		after, _ := fanout()
		var want []fanoutEndpoint
		rows, err := b.pool.Query(ctx, `SELECT id, url, events, auctions, active, secret FROM walhook.endpoints ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var e fanoutEndpoint
			if err := rows.Scan(&e.id, &e.url, &e.events, &e.auctions, &e.active, &e.secret); err != nil {
				t.Fatal(err)
			}
			want = append(want, e)
		}
		if len(after) != len(want) || (len(before) > 0 && len(after) > 0 && &before[0] == &after[0]) {
			t.Fatalf("after %q: %d endpoints (cache kept: %v), want %d read again", change, len(after),
				len(before) > 0 && len(after) > 0 && &before[0] == &after[0], len(want))
		}
		for i := range want {
			g, w := after[i], want[i]
			if g.id != w.id || g.url != w.url || !slices.Equal(g.events, w.events) || !slices.Equal(g.auctions, w.auctions) ||
				g.active != w.active || g.secret != w.secret {
				t.Fatalf("after %q: endpoint %+v, want %+v", change, g, w)
			}
		}
	}

	// The overlap of a previous secret ends while the cache is kept. The
	// first fan-out must come within the overlap: on a slow machine it may
	// not come within a short one, so the overlap is set again, twice as
	// long (a change that moves the version, like a rotate), until a
	// fan-out lands inside it.
	b.endpoint(t, "e3", "https://x.example/", nil, nil, true)
	var eps []fanoutEndpoint
	var now time.Time
	for overlap := 300 * time.Millisecond; ; overlap *= 2 {
		exec(fmt.Sprintf(`UPDATE walhook.endpoints SET previous_secret = secret,
			previous_secret_until = now() + interval '%d milliseconds'`, overlap.Milliseconds()))
		eps, now = fanout()
		if eps[0].prevSecretUntil.After(now) {
			break
		}
		if overlap > time.Minute {
			t.Fatalf("previous secret until %s, not after the append's now() %s", eps[0].prevSecretUntil, now)
		}
	}
	obWaitFor(t, "the store's clock past the overlap", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE previous_secret_until < now()`) == 1
	})
	later, now := fanout()
	if &later[0] != &eps[0] || later[0].prevSecretUntil.After(now) {
		t.Fatalf("after the overlap: cache kept %v, previous secret still valid %v", &later[0] == &eps[0], later[0].prevSecretUntil.After(now))
	}
}

// A transaction changing endpoints holds the append off until it commits,
// and the append then fans out to the endpoints as committed.
func TestAppendWaitsForAnEndpointChange(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	b.endpoint(t, "e1", "https://x.example/", []string{"a.*"}, nil, true)
	obAppend(t, d, 10, obEvent("a.b", "")) // fills the cache
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE walhook.endpoints SET events = '{b.*}'`); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	done := make(chan error, 1)
	go func() {
		done <- d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 8, CommitLSN: 19, EndLSN: 20, Final: true, CommitTime: time.Now(), Events: []mapper.Event{ev}}})
	}()
	// The append waits on the lock of endpoints_version.
	waitForLockWait(t, b.pool, "endpoints_version", func() string {
		select {
		case err := <-done:
			return fmt.Sprintf("Append returned (%v) while an endpoint change was uncommitted", err)
		default:
			return ""
		}
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1`, ev.ID); n != 0 {
		t.Fatalf("%d deliveries for an a.b event to an endpoint that now subscribes to b.*, want 0", n)
	}
}

// Disabling an endpoint with a backlog must not hold appends up while its
// pending deliveries are skipped: appends wait for a transaction that
// changes endpoints (endpoints_version), so the skip runs after it. Here
// the skip is held on one row another transaction has locked, and an
// Append for another endpoint still goes through.
func TestDisableDoesNotHoldUpAppends(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	b.endpoint(t, "e1", "https://x.example/", []string{"a.*"}, nil, true)
	b.endpoint(t, "e2", "https://y.example/", []string{"b.*"}, nil, true)
	pending := obEvent("a.x", "")
	obAppend(t, d, 10, pending)
	blocker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	if _, err := blocker.Exec(ctx, `SELECT FROM walhook.deliveries WHERE event_id = $1 FOR UPDATE`, pending.ID); err != nil {
		t.Fatal(err)
	}
	disabled := make(chan error, 1)
	go func() { disabled <- d.disable(ctx, "e1", "test") }()
	waitForLockWait(t, b.pool, "status = 'skipped'", nil)
	// The disable has committed; only the skip waits.
	if n := b.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = 'e1' AND NOT active`); n != 1 {
		t.Fatalf("e1 not disabled while its deliveries are being skipped")
	}
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	other := obEvent("b.x", "")
	if err := d.Append(actx, "slot", "sys", []TxEvents{{Xid: 9, CommitLSN: 19, EndLSN: 20, Final: true, CommitTime: time.Now(),
		Events: []mapper.Event{other, obEvent("a.y", "")}}}); err != nil {
		t.Fatalf("Append while a disabled endpoint's backlog is skipped: %v", err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'e1' AND status = 'skipped'`); n != 1 {
		t.Fatalf("%d skipped deliveries of e1 from the Append after the disable, want 1", n)
	}
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-disabled; err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1 AND status = 'skipped'`, pending.ID); n != 1 {
		t.Fatalf("the pending delivery of the disabled endpoint was not skipped")
	}
}

// A store dropped and set up again under a running process counts its
// endpoints_version from 1 again: the cache must not take the new
// store's version 2 for the old one's.
func TestAppendEndpointCacheSurvivesANewStore(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	b.endpoint(t, "old", "https://x.example/", nil, nil, true)
	ev := obEvent("a.b", "")
	obAppend(t, d, 10, ev)
	if _, err := b.pool.Exec(ctx, `DROP SCHEMA walhook CASCADE`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, b.pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	b.endpoint(t, "new", "https://y.example/", nil, nil, true)
	if n := b.count(t, `SELECT version FROM walhook.endpoints_version`); n != 2 {
		t.Fatalf("version %d, want 2 as in the old store when it was read", n)
	}
	// The new store has no cursor: Append refuses to go on where the old
	// one's was (TestAppendRefusesACursorThatWentBack) until a new
	// leadership term reads the cursor, as run's does.
	d.ExpectCursor("slot", 0)
	ev = obEvent("a.b", "")
	obAppend(t, d, 20, ev)
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE event_id = $1 AND endpoint_id = 'new'`, ev.ID); n != 1 {
		t.Fatalf("%d deliveries to the new store's endpoint, want 1 (the old store's endpoints were kept)", n)
	}
}

// A transaction whose event text is larger than one INSERT may carry (1 GB
// in PostgreSQL and pgx; here insertBytes is made small) is stored whole,
// in several INSERTs of the one Append transaction: it failed every Append
// ("message body too large"), on every restart. parts splits by size, a
// row larger than the bound going alone.
func TestAppendSplitsLargeTransactions(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, func(o *Options) { o.insertBytes = 2000 })
	b.endpoint(t, "whk_1", "http://127.0.0.1:1/", nil, nil, false)
	var evs []mapper.Event
	for i := range 20 {
		e := obEvent("a.b", "")
		e.Data = json.RawMessage(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 300+i*100)))
		evs = append(evs, e)
	}
	var r eventRows
	tx := TxEvents{Events: evs}
	for i := range evs {
		r.add(&tx, &evs[i])
	}
	parts := r.parts(d.opts.insertBytes)
	if len(parts) < 5 || parts[0][0] != 0 || parts[len(parts)-1][1] != len(evs) {
		t.Fatalf("parts %v of 20 events: want several, covering them all", parts)
	}
	for i := 1; i < len(parts); i++ {
		if parts[i][0] != parts[i-1][1] {
			t.Fatalf("parts %v leave a gap or overlap", parts)
		}
	}
	obAppend(t, d, 10, evs...)
	if n := b.count(t, `SELECT count(*) FROM walhook.events`); n != len(evs) {
		t.Fatalf("%d events stored, want %d", n, len(evs))
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries`); n != len(evs) {
		t.Fatalf("%d deliveries stored, want %d", n, len(evs))
	}
}

// An Append whose pipeline fails part way (here the deliveries insert)
// commits nothing of it: no event, no delivery, no cursor move. The
// transaction it left open ends with its connection, which the pool
// closes (no session stays idle in transaction holding the endpoints
// version's share lock, which an endpoint change would wait for), and
// the next Append stores and hands over as usual.
func TestAppendFailingPartWayCommitsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b := obSetup(t, nil)
	b.endpoint(t, "e1", "https://x.example/", nil, nil, true)
	if _, err := b.pool.Exec(ctx, `
		CREATE FUNCTION walhook.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
		CREATE TRIGGER refuse BEFORE INSERT ON walhook.deliveries FOR EACH ROW EXECUTE FUNCTION walhook.refuse()`); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 7, CommitLSN: 99, EndLSN: 100, Final: true, CommitTime: time.Now(), Events: []mapper.Event{ev}}})
	if err == nil || !strings.Contains(err.Error(), "refused by the test") {
		t.Fatalf("Append = %v, want the trigger's error", err)
	}
	for table, want := range map[string]int{"events": 0, "deliveries": 0, "cursor": 0} {
		if n := b.count(t, `SELECT count(*) FROM walhook.`+table); n != want {
			t.Errorf("%d rows in %s after the failed Append, want %d", n, table, want)
		}
	}
	// The pool closes the failed connection in the background: its
	// session ends a moment after Append returns.
	obWaitFor(t, "no session idle in transaction after the failed Append", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`) == 0
	})
	// An endpoint change does not wait for a lock the failed Append kept.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := b.pool.Exec(cctx, `UPDATE walhook.endpoints SET url = 'https://y.example/' WHERE id = 'e1'`); err != nil {
		t.Fatalf("endpoint change after the failed Append: %v", err)
	}
	if _, err := b.pool.Exec(ctx, `DROP TRIGGER refuse ON walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	obAppend(t, d, 200, ev)
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'e1'`); n != 1 {
		t.Errorf("%d deliveries after the second Append, want 1", n)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.cursor WHERE lsn = '0/C8'`); n != 1 {
		t.Error("the cursor did not move to the second Append's end")
	}
}
