package api_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
)

type statusData struct {
	Slot *struct {
		Slot          string `json:"slot"`
		Active        bool   `json:"active"`
		WALStatus     string `json:"walStatus"`
		ConfirmedLSN  string `json:"confirmedLsn"`
		RetainedBytes int64  `json:"retainedBytes"`
		LagBytes      int64  `json:"lagBytes"`
		State         string `json:"state"`
		Error         string `json:"error"`
	} `json:"slot"`
	Outbox struct {
		Pending                 int     `json:"pending"`
		Failing                 int     `json:"failing"`
		Failed                  int     `json:"failed"`
		Skipped                 int     `json:"skipped"`
		OldestPendingAgeSeconds float64 `json:"oldestPendingAgeSeconds"`
		DeliveriesPerSecond     float64 `json:"deliveriesPerSecond"`
	} `json:"outbox"`
	Endpoints struct {
		Healthy int `json:"healthy"`
		Failing []struct {
			ID     string `json:"id"`
			Reason string `json:"reason"`
		} `json:"failing"`
		Disabled []struct {
			ID     string `json:"id"`
			Reason string `json:"reason"`
			Since  *int64 `json:"since"`
		} `json:"disabled"`
	} `json:"endpoints"`
}

// streamStatus adapts a cdc stream to api.Replication, as cmd/walhook does.
type streamStatus struct{ s *cdc.Stream }

func (r streamStatus) Status(ctx context.Context) (api.ReplicationStatus, error) {
	st, err := r.s.Status(ctx)
	return api.ReplicationStatus{
		Slot: st.Slot, Active: st.Active, WALStatus: st.WALStatus, ConfirmedLSN: st.ConfirmedFlushLSN.String(),
		RetainedBytes: st.RetainedBytes, LagBytes: st.LagBytes, LagSeconds: st.LagSeconds,
		State: st.State, LastError: st.LastError,
	}, err
}

var slotSeq atomic.Int64

func TestEventsCatalog(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	var ev struct {
		Events []api.CatalogEntry `json:"events"`
	}
	s.call(t, "GET", "/api/v1/events", nil).ok(t, http.StatusOK, &ev)
	if len(ev.Events) != len(testCatalog) {
		t.Fatalf("%d events, want %d", len(ev.Events), len(testCatalog))
	}
	for i := range testCatalog {
		if ev.Events[i] != testCatalog[i] {
			t.Fatalf("event %d: %+v, want %+v", i, ev.Events[i], testCatalog[i])
		}
	}
}

func TestStatusReportsSlotOutboxAndEndpoints(t *testing.T) {
	t.Parallel()
	var stream *cdc.Stream
	slot := fmt.Sprintf("walhook_api_%d", slotSeq.Add(1))
	s := newStack(t, stackConfig{noRun: true, api: func(o *api.Options) {
		o.Replication = replicationFunc(func(ctx context.Context) (api.ReplicationStatus, error) {
			return streamStatus{stream}.Status(ctx)
		})
	}})
	var err error
	stream, err = cdc.NewStream(cdc.Options{DSN: s.dsn, Slot: slot, Publication: "walhook"})
	if err != nil {
		t.Fatal(err)
	}

	// Before the slot exists the status still answers, with the error.
	var st statusData
	s.call(t, "GET", "/api/v1/status", nil).ok(t, http.StatusOK, &st)
	if st.Slot == nil || st.Slot.Error == "" || !strings.Contains(st.Slot.Error, slot) {
		t.Fatalf("status without a slot: %+v, want the slot error", st.Slot)
	}

	s.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	s.exec(t, `CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 2000) g`)

	// A healthy endpoint, and one disabled by an admin; the dispatcher is
	// not running, so appended events stay pending.
	healthy := s.create(t, "https://hooks.example.com/ok")
	off := s.create(t, "https://hooks.example.com/off")
	s.call(t, "PUT", "/api/v1/webhooks/"+off.SubscriptionID, map[string]any{"active": false}).ok(t, http.StatusOK, nil)
	s.appendEvents(t, "auction.bid", "A1", 3)

	st = statusData{}
	s.call(t, "GET", "/api/v1/status", nil).ok(t, http.StatusOK, &st)
	if st.Slot == nil || st.Slot.Error != "" || st.Slot.Slot != slot || st.Slot.Active ||
		st.Slot.WALStatus != "reserved" || st.Slot.ConfirmedLSN == "" || st.Slot.RetainedBytes <= 0 || st.Slot.LagBytes <= 0 {
		t.Fatalf("slot %+v: want our inactive reserved slot with retained WAL and lag", st.Slot)
	}
	if st.Outbox.Pending != 3 || st.Outbox.Skipped != 3 || st.Outbox.OldestPendingAgeSeconds < 0 {
		t.Fatalf("outbox %+v, want 3 pending (healthy) and 3 skipped (disabled)", st.Outbox)
	}
	if st.Endpoints.Healthy != 1 || len(st.Endpoints.Disabled) != 1 || st.Endpoints.Disabled[0].ID != off.SubscriptionID ||
		st.Endpoints.Disabled[0].Reason != "disabled by admin" || st.Endpoints.Disabled[0].Since == nil {
		t.Fatalf("endpoints %+v, want %s healthy and %s disabled by admin", st.Endpoints, healthy.SubscriptionID, off.SubscriptionID)
	}

	// Without a Replication the slot is null.
	plain := newStack(t, stackConfig{})
	var ps struct {
		Slot *struct{} `json:"slot"`
	}
	r := plain.call(t, "GET", "/api/v1/status", nil)
	r.ok(t, http.StatusOK, &ps)
	if ps.Slot != nil || !strings.Contains(string(r.Raw), `"slot":null`) {
		t.Fatalf("status without replication: %s", r.Raw)
	}
}

// While the store does not answer, the status still shows the slot
// (what an operator watches then), with outbox and endpoints null and a
// storeError that names no host.
func TestStatusWithTheStoreDown(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{noRun: true, api: func(o *api.Options) {
		o.Replication = replicationFunc(func(ctx context.Context) (api.ReplicationStatus, error) {
			return api.ReplicationStatus{Slot: "walhook", RetainedBytes: 12345}, nil
		})
		closed, err := pgxpool.New(context.Background(), "postgres://walhook@127.0.0.1:1/app?connect_timeout=1")
		if err != nil {
			t.Fatal(err)
		}
		closed.Close()
		o.Admin = dispatch.NewAdmin(closed, "walhook", nil)
	}})
	r := s.call(t, "GET", "/api/v1/status", nil)
	var st struct {
		Slot *struct {
			RetainedBytes int64 `json:"retainedBytes"`
		} `json:"slot"`
		Outbox     *struct{} `json:"outbox"`
		Endpoints  *struct{} `json:"endpoints"`
		StoreError string    `json:"storeError"`
	}
	r.ok(t, http.StatusOK, &st)
	if st.Slot == nil || st.Slot.RetainedBytes != 12345 || st.Outbox != nil || st.Endpoints != nil ||
		st.StoreError != "the store does not answer (the log says why)" || strings.Contains(string(r.Raw), "127.0.0.1") {
		t.Fatalf("status with the store down: %s", r.Raw)
	}
}

type replicationFunc func(ctx context.Context) (api.ReplicationStatus, error)

func (f replicationFunc) Status(ctx context.Context) (api.ReplicationStatus, error) { return f(ctx) }

func TestMetricsExposeDeliveriesAndRequests(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	c := s.create(t, rc.URL, "auction.*")
	s.appendEvents(t, "auction.bid", "A1", 2)
	waitFor(t, "2 deliveries", func() bool { return len(rc.requests()) == 2 })
	// A test send is a delivery, but no source commit: not in the
	// commit-to-delivery latency.
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, nil)
	s.call(t, "GET", "/api/v1/webhooks/whk_0000000000000000", nil).fails(t, http.StatusNotFound, "not_found")
	waitFor(t, "delivery metrics", func() bool {
		return strings.Contains(metrics(t, s), `walhook_delivery_attempts_total{endpoint="`+c.SubscriptionID+`",outcome="delivered"} 3`)
	})
	m := metrics(t, s)
	for _, want := range []string{
		`walhook_api_requests_total{code="201",route="POST /api/v1/webhooks/create"} 1`,
		`walhook_api_requests_total{code="404",route="GET /api/v1/webhooks/{id}"} 1`,
		`walhook_attempt_duration_seconds_count 3`,
		`walhook_commit_to_delivery_seconds_count 2`,
		`walhook_outbox_pending`,
		`walhook_outbox_oldest_pending_seconds`,
		`walhook_api_request_duration_seconds_bucket`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func metrics(t *testing.T, s *stack) string {
	t.Helper()
	res, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", res.StatusCode, err)
	}
	return string(b)
}

// A source that does not answer (packets dropped: the connect hangs until
// its context ends) uses up the slot probe's time, not the outbox's: the
// healthy store is still reported, and the slot's numbers, which were not
// read, are null rather than zeros that look like a caught-up slot.
func TestStatusWithTheSourceNotAnswering(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{noRun: true, api: func(o *api.Options) {
		o.Replication = replicationFunc(func(ctx context.Context) (api.ReplicationStatus, error) {
			<-ctx.Done()
			return api.ReplicationStatus{Slot: "walhook", State: "connecting"}, fmt.Errorf("connect: %w", ctx.Err())
		})
	}})
	s.create(t, "https://hooks.example.com/ok")
	s.appendEvents(t, "auction.bid", "A1", 2)

	r := s.call(t, "GET", "/api/v1/status", nil)
	var st struct {
		Slot   map[string]any `json:"slot"`
		Outbox *struct {
			Pending int `json:"pending"`
		} `json:"outbox"`
		Endpoints *struct {
			Healthy int `json:"healthy"`
		} `json:"endpoints"`
		StoreError *string `json:"storeError"`
	}
	r.ok(t, http.StatusOK, &st)
	if st.StoreError != nil || st.Outbox == nil || st.Outbox.Pending != 2 || st.Endpoints == nil || st.Endpoints.Healthy != 1 {
		t.Fatalf("status while the source does not answer: %s, want the store's outbox and endpoints", r.Raw)
	}
	if st.Slot == nil || st.Slot["slot"] != "walhook" || st.Slot["state"] != "connecting" || !strings.Contains(fmt.Sprint(st.Slot["error"]), "deadline") {
		t.Fatalf("slot %v: want its name, state and the probe's error", st.Slot)
	}
	for _, k := range []string{"active", "walStatus", "confirmedLsn", "retainedBytes", "lagBytes", "lagSeconds"} {
		if v, ok := st.Slot[k]; !ok || v != nil {
			t.Errorf("slot.%s = %v (present %v), want null: it was not read", k, v, ok)
		}
	}
}

// A process that does not stream cannot tell how long the slot's WAL has
// waited (the leader can): lagSeconds is null then, next to the slot's
// numbers it did read.
func TestStatusWithTheLagUnknownHere(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{noRun: true, api: func(o *api.Options) {
		o.Replication = replicationFunc(func(ctx context.Context) (api.ReplicationStatus, error) {
			return api.ReplicationStatus{Slot: "walhook", Active: true, WALStatus: "reserved", ConfirmedLSN: "0/1", LagBytes: 512,
				LagSecondsUnknown: true, State: "standby"}, nil
		})
	}})
	r := s.call(t, "GET", "/api/v1/status", nil)
	var st struct {
		Slot map[string]any `json:"slot"`
	}
	r.ok(t, http.StatusOK, &st)
	if v, ok := st.Slot["lagSeconds"]; !ok || v != nil || st.Slot["lagBytes"] != float64(512) || st.Slot["state"] != "standby" {
		t.Errorf("slot %v: want lagSeconds null (present), lagBytes 512, state standby", st.Slot)
	}
}

// With tens of millions pending the first count of the outbox outlives
// the request's 5 s: the page says the count goes on, with the endpoints
// (read first) and no outbox, and a request once it has ended shows it.
// A table lock held by another transaction stands in for the long count.
func TestStatusWhileTheFirstCountGoesOn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, stackConfig{noRun: true})
	s.create(t, "https://hooks.example.com/ok")
	s.appendEvents(t, "auction.bid", "A1", 2)
	holder, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `LOCK TABLE walhook.deliveries IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	type page struct {
		Outbox *struct {
			Pending int `json:"pending"`
		} `json:"outbox"`
		Endpoints *struct {
			Healthy int `json:"healthy"`
		} `json:"endpoints"`
		StoreError string `json:"storeError"`
	}
	var st page
	r := s.call(t, "GET", "/api/v1/status", nil)
	r.ok(t, http.StatusOK, &st)
	if st.Outbox != nil || st.Endpoints == nil || st.Endpoints.Healthy != 1 || !strings.Contains(st.StoreError, "the count goes on") {
		t.Fatalf("status while the first count goes on: %s; want outbox null, the endpoint, and storeError saying the count goes on", r.Raw)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st = page{}
		r = s.call(t, "GET", "/api/v1/status", nil)
		r.ok(t, http.StatusOK, &st)
		if st.Outbox != nil && st.Outbox.Pending == 2 && st.StoreError == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the lock went: %s; want 2 pending", r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
