package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/mapper"
)

type testData struct {
	DeliveryID     string  `json:"deliveryId"`
	StatusCode     *int    `json:"statusCode"`
	ResponseTimeMs int64   `json:"responseTimeMs"`
	Error          *string `json:"error"`
}

type deliveryData struct {
	ID                 string  `json:"id"`
	EventID            string  `json:"eventId"`
	WebhookID          string  `json:"webhookId"`
	EventType          string  `json:"eventType"`
	Status             string  `json:"status"`
	Attempts           int     `json:"attempts"`
	ResponseStatusCode *int    `json:"responseStatusCode"`
	ResponseTimeMs     *int64  `json:"responseTimeMs"`
	Error              *string `json:"error"`
	CreatedAt          int64   `json:"createdAt"`
	DeliveredAt        *int64  `json:"deliveredAt"`
}

type deliveriesData struct {
	Deliveries []deliveryData `json:"deliveries"`
	NextCursor *string        `json:"nextCursor"`
}

type deliveryDetail struct {
	Delivery deliveryData `json:"delivery"`
	Attempts []struct {
		Attempt      int     `json:"attempt"`
		StartedAt    int64   `json:"startedAt"`
		DurationMs   int64   `json:"durationMs"`
		StatusCode   *int    `json:"statusCode"`
		Error        *string `json:"error"`
		ResponseBody string  `json:"responseBody"`
		Signatures   int     `json:"signatures"`
	} `json:"attempts"`
}

func verify(t *testing.T, secret string, r received) error {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	return wh.Verify(r.Body, r.Header)
}

func TestSendTestToReceiverThatIsUp(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	c := s.create(t, rc.URL+"/in")

	var td testData
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, &td)
	if td.StatusCode == nil || *td.StatusCode != 200 || td.Error != nil || td.DeliveryID == "" {
		t.Fatalf("test send: %+v", td)
	}
	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("receiver got %d requests, want 1", len(reqs))
	}
	if err := verify(t, c.Secret, reqs[0]); err != nil {
		t.Fatalf("the test event's signature does not verify with the endpoint's secret: %v", err)
	}
	if got := reqs[0].Header.Get("X-Webhook-Event"); got != dispatch.TestEventType {
		t.Fatalf("X-Webhook-Event %q, want %q", got, dispatch.TestEventType)
	}
	if got := reqs[0].Header.Get("webhook-id"); got != td.DeliveryID {
		t.Fatalf("webhook-id %q, want the returned deliveryId %q", got, td.DeliveryID)
	}
	var body map[string]any
	if err := json.Unmarshal(reqs[0].Body, &body); err != nil || body["event"] != dispatch.TestEventType {
		t.Fatalf("body %s: %v", reqs[0].Body, err)
	}

	// It is in the history like any delivery, with its attempt.
	var h deliveriesData
	s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID+"/deliveries", nil).ok(t, http.StatusOK, &h)
	if len(h.Deliveries) != 1 {
		t.Fatalf("history has %d deliveries, want the test send", len(h.Deliveries))
	}
	d := h.Deliveries[0]
	if d.ID != td.DeliveryID || d.EventType != dispatch.TestEventType || d.Status != "delivered" || d.Attempts != 1 ||
		d.ResponseStatusCode == nil || *d.ResponseStatusCode != 200 || d.ResponseTimeMs == nil || d.DeliveredAt == nil {
		t.Fatalf("history entry %+v", d)
	}
	var dd deliveryDetail
	s.call(t, "GET", "/api/v1/deliveries/"+td.DeliveryID, nil).ok(t, http.StatusOK, &dd)
	if len(dd.Attempts) != 1 || dd.Attempts[0].StatusCode == nil || *dd.Attempts[0].StatusCode != 200 ||
		dd.Attempts[0].ResponseBody != "receiver says hello" || dd.Attempts[0].Signatures != 1 {
		t.Fatalf("delivery detail %+v", dd)
	}
}

func TestSendTestToReceiverThatIsDown(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	// A port that was just free: nothing listens, the dial is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := s.create(t, "http://"+addr+"/in")

	var td testData
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, &td)
	if td.StatusCode != nil || td.Error == nil || !strings.Contains(*td.Error, "refused") {
		t.Fatalf("test send to a closed port: %+v, want no status and a connection refused error", td)
	}
	var dd deliveryDetail
	s.call(t, "GET", "/api/v1/deliveries/"+td.DeliveryID, nil).ok(t, http.StatusOK, &dd)
	if dd.Delivery.Status != "failed" || len(dd.Attempts) != 1 || dd.Attempts[0].Error == nil {
		t.Fatalf("recorded as %+v", dd)
	}
	// A test does not count against the endpoint's health.
	var w webhookData
	s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID, nil).ok(t, http.StatusOK, &w)
	if !w.Active {
		t.Fatal("a failed test send disabled the endpoint")
	}
	if n := s.count(t, `SELECT count(*) FROM walhook.endpoints WHERE failing_since IS NOT NULL`); n != 0 {
		t.Fatal("a failed test send marked the endpoint failing")
	}
}

func TestSendTestToReceiverThatIsSlow(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{dispatch: func(o *dispatch.Options) { o.Client.Timeout = 300 * time.Millisecond }})
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	c := s.create(t, slow.URL)

	var td testData
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, &td)
	if td.StatusCode != nil || td.Error == nil || !strings.Contains(*td.Error, "timeout") {
		t.Fatalf("test send to a receiver slower than the timeout: %+v, want a timeout error", td)
	}
	if td.ResponseTimeMs < 300 {
		t.Fatalf("response time %d ms: the attempt gave up before the 300 ms timeout", td.ResponseTimeMs)
	}
	var h deliveriesData
	s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID+"/deliveries?status=failed", nil).ok(t, http.StatusOK, &h)
	if len(h.Deliveries) != 1 || h.Deliveries[0].Error == nil || !strings.Contains(*h.Deliveries[0].Error, "timeout") {
		t.Fatalf("history: %+v", h.Deliveries)
	}
}

func TestSendTestRefusals(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	id := s.create(t, "https://hooks.example.com/a").SubscriptionID
	checkRefused(t, s, []badCase{
		{"unknown webhook", "POST", "/api/v1/webhooks/whk_0000000000000000/test", nil, http.StatusNotFound, "not_found"},
		{"body with a field", "POST", "/api/v1/webhooks/" + id + "/test", `{"event":"auction.bid"}`, 0, "invalid_body"},
		{"malformed body", "POST", "/api/v1/webhooks/" + id + "/test", `{`, 0, "invalid_json"},
	})
}

// TestDeliveryHistoryFilters fills an endpoint's history with delivered and
// failed deliveries and reads it back by status, time and page.
func TestDeliveryHistoryFilters(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	c := s.create(t, rc.URL, "auction.bid")
	s.appendEvents(t, "auction.bid", "A1", 3)
	waitFor(t, "3 deliveries", func() bool { return len(rc.requests()) == 3 })
	waitFor(t, "3 delivered", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == 3
	})
	rc.setStatus(http.StatusInternalServerError)
	s.appendEvents(t, "auction.bid", "A1", 2)
	waitFor(t, "2 failed", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'failed'`) == 2
	})
	// One delivery from long ago, to filter by time.
	s.exec(t, `UPDATE walhook.deliveries SET created_at = '2020-01-01T00:00:00Z'
		WHERE id = (SELECT id FROM walhook.deliveries WHERE status = 'delivered' ORDER BY id LIMIT 1)`)
	// An event the endpoint does not subscribe to makes no delivery.
	s.appendEvents(t, "auction.created", "A1", 1)

	base := "/api/v1/webhooks/" + c.SubscriptionID + "/deliveries"
	get := func(q string) []deliveryData {
		t.Helper()
		var h deliveriesData
		s.call(t, "GET", base+q, nil).ok(t, http.StatusOK, &h)
		return h.Deliveries
	}
	if all := get(""); len(all) != 5 {
		t.Fatalf("%d deliveries, want 5", len(all))
	}
	failed := get("?status=failed")
	if len(failed) != 2 {
		t.Fatalf("status=failed: %d, want 2", len(failed))
	}
	for _, d := range failed {
		if d.Status != "failed" || d.Attempts != 3 || d.ResponseStatusCode == nil || *d.ResponseStatusCode != 500 ||
			d.Error == nil || d.EventType != "auction.bid" || d.WebhookID != c.SubscriptionID {
			t.Fatalf("failed delivery %+v", d)
		}
	}
	if n := len(get("?status=delivered")); n != 3 {
		t.Fatalf("status=delivered: %d, want 3", n)
	}
	if n := len(get("?status=pending")); n != 0 {
		t.Fatalf("status=pending: %d, want 0", n)
	}
	if n := len(get("?until=2021-01-01T00:00:00Z")); n != 1 {
		t.Fatalf("until 2021: %d, want the old one", n)
	}
	// An offset's '+' as curl sends it, not percent-encoded: a query
	// string reads it as a space, which no time holds. Strictly before
	// 00:00:01Z the old delivery is, before 00:00:00Z it is not.
	if n := len(get("?until=2020-01-01T01:00:01+01:00")); n != 1 {
		t.Fatalf("until 01:00:01+01:00 (unencoded '+'): %d, want the old one", n)
	}
	if n := len(get("?until=2020-01-01T01:00:00%2B01:00")); n != 0 {
		t.Fatalf("until 01:00:00+01:00: %d, want none", n)
	}
	since := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	if n := len(get("?since=" + since)); n != 4 {
		t.Fatalf("since an hour ago (unix seconds): %d, want 4", n)
	}
	if n := len(get("?status=delivered&since=" + since)); n != 2 {
		t.Fatalf("delivered since an hour ago: %d, want 2", n)
	}
	// Pages of 2, newest first, each delivery once.
	var seen []string
	q := "?limit=2"
	for pages := 0; ; pages++ {
		var h deliveriesData
		s.call(t, "GET", base+q, nil).ok(t, http.StatusOK, &h)
		for _, d := range h.Deliveries {
			seen = append(seen, d.ID)
		}
		if h.NextCursor == nil {
			break
		}
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		q = "?limit=2&cursor=" + *h.NextCursor
	}
	slices.Sort(seen)
	if len(seen) != 5 || len(slices.Compact(seen)) != 5 {
		t.Fatalf("paged through %v, want 5 distinct deliveries", seen)
	}
}

func TestGetDeliveryWithAttempts(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	rc.setStatus(http.StatusServiceUnavailable)
	c := s.create(t, rc.URL, "auction.*")
	ev := s.appendEvents(t, "auction.settled", "A1", 1)[0]
	id := mapper.DeliveryID(ev.Envelope, ev.ID, c.SubscriptionID)
	waitFor(t, "the delivery to fail", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.deliveries WHERE id = $1 AND status = 'failed'`, id) == 1
	})
	var dd deliveryDetail
	s.call(t, "GET", "/api/v1/deliveries/"+id, nil).ok(t, http.StatusOK, &dd)
	if dd.Delivery.ID != id || dd.Delivery.Status != "failed" || dd.Delivery.Attempts != 3 || len(dd.Attempts) != 3 {
		t.Fatalf("delivery %+v with %d attempts, want failed after 3", dd.Delivery, len(dd.Attempts))
	}
	for i, a := range dd.Attempts {
		if a.Attempt != i+1 || a.StatusCode == nil || *a.StatusCode != 503 || a.Error == nil || a.StartedAt == 0 {
			t.Fatalf("attempt %d: %+v", i, a)
		}
	}
	s.call(t, "GET", "/api/v1/deliveries/nope", nil).fails(t, http.StatusNotFound, "not_found")
}

func TestRedeliver(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	c := s.create(t, rc.URL, "auction.bid")
	ev := s.appendEvents(t, "auction.bid", "A1", 1)[0]
	id := mapper.DeliveryID(ev.Envelope, ev.ID, c.SubscriptionID)
	waitFor(t, "the first delivery", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.deliveries WHERE id = $1 AND status = 'delivered'`, id) == 1
	})
	var d deliveryData
	s.call(t, "POST", "/api/v1/deliveries/"+id+"/redeliver", nil).ok(t, http.StatusOK, &d)
	if d.ID != id || d.Status != "pending" || d.Attempts != 0 {
		t.Fatalf("redeliver returned %+v, want pending with attempts reset", d)
	}
	waitFor(t, "the second arrival", func() bool { return len(rc.requests()) == 2 })
	if ids := rc.ids(); ids[0] != id || ids[1] != id {
		t.Fatalf("webhook-ids %v, want the same id %s twice (receivers de-duplicate by it)", ids, id)
	}
	reqs := rc.requests()
	if string(reqs[0].Body) != string(reqs[1].Body) {
		t.Fatal("a redelivery has a different body")
	}
	if err := verify(t, c.Secret, reqs[1]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "redelivered", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1`, id) == 2
	})

	// Refused: a test send (never retried), unknown delivery, disabled
	// endpoint, a body.
	var td testData
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, &td)
	s.call(t, "PUT", "/api/v1/webhooks/"+c.SubscriptionID, map[string]any{"active": false}).ok(t, http.StatusOK, nil)
	checkRefused(t, s, []badCase{
		{"test send", "POST", "/api/v1/deliveries/" + td.DeliveryID + "/redeliver", nil, http.StatusConflict, "test_send"},
		{"unknown delivery", "POST", "/api/v1/deliveries/nope/redeliver", nil, http.StatusNotFound, "not_found"},
		{"disabled endpoint", "POST", "/api/v1/deliveries/" + id + "/redeliver", nil, http.StatusConflict, "endpoint_disabled"},
		{"unknown field", "POST", "/api/v1/deliveries/" + id + "/redeliver", `{"force":true}`, 0, "invalid_body"},
	})
}

// TestRecoverAfterDisable: a receiver answers 410, which disables its
// endpoint at once; events appended while it is disabled are kept as
// skipped; after re-enabling and recover they all arrive.
func TestRecoverAfterDisable(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	rc.setStatus(http.StatusGone)
	c := s.create(t, rc.URL, "auction.*")
	start := time.Now().Add(-time.Second)
	first := s.appendEvents(t, "auction.created", "A1", 1)
	waitFor(t, "410 to disable the endpoint", func() bool {
		var w webhookData
		s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID, nil).ok(t, http.StatusOK, &w)
		return !w.Active
	})
	var w webhookData
	s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID, nil).ok(t, http.StatusOK, &w)
	if w.DisabledReason == nil || !strings.Contains(*w.DisabledReason, "410") || w.DisabledAt == nil {
		t.Fatalf("disabled endpoint shows %+v, want the 410 as reason and a time", w)
	}
	var st statusData
	s.call(t, "GET", "/api/v1/status", nil).ok(t, http.StatusOK, &st)
	if len(st.Endpoints.Disabled) != 1 || st.Endpoints.Disabled[0].ID != c.SubscriptionID || !strings.Contains(st.Endpoints.Disabled[0].Reason, "410") {
		t.Fatalf("status endpoints %+v, want ours disabled with the 410 reason", st.Endpoints)
	}

	// Events while disabled: kept, skipped, not sent.
	skipped := s.appendEvents(t, "auction.bid", "A1", 3)
	time.Sleep(200 * time.Millisecond) // several poll intervals: nothing may be sent
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("receiver got %d requests while disabled, want only the first (the 410)", n)
	}
	// The one answered by 410 is skipped too: its retry was pending when
	// the endpoint was disabled.
	var h deliveriesData
	s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID+"/deliveries?status=skipped", nil).ok(t, http.StatusOK, &h)
	if len(h.Deliveries) != 4 {
		t.Fatalf("history shows %d skipped, want 4", len(h.Deliveries))
	}

	// Recover is refused while disabled, and changes nothing.
	checkRefused(t, s, []badCase{
		{"while disabled", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", map[string]any{"since": start.Unix()}, http.StatusConflict, "endpoint_disabled"},
		{"since missing", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", `{}`, 0, "invalid_body"},
		{"since null", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", `{"since":null}`, 0, "invalid_body"},
		{"since not a time", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", `{"since":"last tuesday"}`, 0, "invalid_body"},
		{"since wrong type", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", `{"since":true}`, 0, "invalid_body"},
		{"since out of range", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", `{"since":99999999999999}`, 0, "invalid_body"},
		{"unknown field", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", `{"since":0,"status":"failed"}`, 0, "invalid_body"},
		{"no body", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/recover", nil, 0, "invalid_json"},
		{"unknown webhook", "POST", "/api/v1/webhooks/whk_0000000000000000/recover", `{"since":0}`, http.StatusNotFound, "not_found"},
	})

	// The receiver is fixed; re-enable, recover since the start.
	rc.setStatus(http.StatusOK)
	s.call(t, "PUT", "/api/v1/webhooks/"+c.SubscriptionID, map[string]any{"active": true}).ok(t, http.StatusOK, &w)
	if !w.Active || w.DisabledReason != nil {
		t.Fatalf("after re-enable: %+v", w)
	}
	var rec struct {
		Requeued int   `json:"requeued"`
		Since    int64 `json:"since"`
	}
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/recover",
		map[string]any{"since": start.UTC().Format(time.RFC3339)}).ok(t, http.StatusOK, &rec)
	if rec.Requeued != 4 {
		t.Fatalf("requeued %d, want 4 (the one answered by 410 and the 3 appended while disabled)", rec.Requeued)
	}
	want := map[string]bool{}
	for _, ev := range append(first, skipped...) {
		want[mapper.DeliveryID(ev.Envelope, ev.ID, c.SubscriptionID)] = true
	}
	waitFor(t, "the recovered events at the receiver", func() bool {
		got := map[string]bool{}
		for _, r := range rc.requests()[1:] {
			got[r.Header.Get("webhook-id")] = true
		}
		for id := range want {
			if !got[id] {
				return false
			}
		}
		return true
	})
	for _, r := range rc.requests()[1:] {
		if !want[r.Header.Get("webhook-id")] {
			t.Fatalf("unexpected delivery %s", r.Header.Get("webhook-id"))
		}
		if err := verify(t, c.Secret, r); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all delivered", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == 4
	})
	// Nothing is left to recover. Unix seconds before 1970 are read as
	// the history query reads them (?since=-1).
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/recover", `{"since":-1}`).ok(t, http.StatusOK, &rec)
	if rec.Requeued != 0 || rec.Since != -1 {
		t.Fatalf("second recover requeued %d since %d, want 0 since -1", rec.Requeued, rec.Since)
	}
}

// TestRotateSecretSignsWithBoth: after a rotation every request carries two
// signatures, and a Standard Webhooks verifier holding either secret
// accepts it.
func TestRotateSecretSignsWithBoth(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)
	c := s.create(t, rc.URL, "auction.*")
	var rot struct {
		Secret                   string `json:"secret"`
		PreviousSecretValidUntil *int64 `json:"previousSecretValidUntil"`
	}
	before := time.Now()
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/rotate-secret", nil).ok(t, http.StatusOK, &rot)
	if _, err := dispatch.DecodeSecret(rot.Secret); err != nil || rot.Secret == c.Secret {
		t.Fatalf("rotated secret %q: %v (want a new whsec_ secret)", rot.Secret, err)
	}
	if rot.PreviousSecretValidUntil == nil {
		t.Fatal("no overlap reported")
	}
	until := time.Unix(*rot.PreviousSecretValidUntil, 0)
	if d := until.Sub(before); d < 23*time.Hour || d > 25*time.Hour {
		t.Fatalf("old secret valid until %s: want the default 24 h overlap", until)
	}
	var w webhookData
	get := s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID, nil)
	get.ok(t, http.StatusOK, &w)
	if w.PreviousSecretValidUntil == nil || *w.PreviousSecretValidUntil != *rot.PreviousSecretValidUntil {
		t.Fatalf("GET shows previousSecretValidUntil %v", w.PreviousSecretValidUntil)
	}
	if strings.Contains(string(get.Raw), rot.Secret) {
		t.Fatal("GET shows the new secret")
	}

	// A real event and a test send: both signed twice.
	s.appendEvents(t, "auction.bid", "A1", 1)
	waitFor(t, "the event", func() bool { return len(rc.requests()) == 1 })
	var td testData
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, &td)
	reqs := rc.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	for i, r := range reqs {
		sig := r.Header.Get("webhook-signature")
		if n := len(strings.Fields(sig)); n != 2 || strings.Count(sig, "v1,") != 2 {
			t.Fatalf("request %d: signature header %q, want two space-separated v1 signatures", i, sig)
		}
		if r.Header.Get("X-Webhook-Signature") != sig {
			t.Fatalf("request %d: X-Webhook-Signature differs from webhook-signature", i)
		}
		for _, secret := range []string{c.Secret, rot.Secret} {
			if err := verify(t, secret, r); err != nil {
				t.Fatalf("request %d: a verifier with one of the two secrets refused: %v", i, err)
			}
		}
		if err := verify(t, dispatch.NewSecret(), r); err == nil {
			t.Fatalf("request %d: a verifier with an unrelated secret accepted it", i)
		}
	}
	var dd deliveryDetail
	s.call(t, "GET", "/api/v1/deliveries/"+td.DeliveryID, nil).ok(t, http.StatusOK, &dd)
	if len(dd.Attempts) != 1 || dd.Attempts[0].Signatures != 2 {
		t.Fatalf("attempt log: %+v, want 2 signatures recorded", dd.Attempts)
	}

	// Once the overlap is over only the new secret signs.
	s.exec(t, `UPDATE walhook.endpoints SET previous_secret_until = now() - interval '1 second' WHERE id = $1`, c.SubscriptionID)
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/test", nil).ok(t, http.StatusOK, &td)
	last := rc.requests()[2]
	if n := len(strings.Fields(last.Header.Get("webhook-signature"))); n != 1 {
		t.Fatalf("%d signatures after the overlap, want 1", n)
	}
	if verify(t, rot.Secret, last) != nil || verify(t, c.Secret, last) == nil {
		t.Fatal("after the overlap: want only the new secret to verify")
	}
	checkRefused(t, s, []badCase{
		{"unknown webhook", "POST", "/api/v1/webhooks/whk_0000000000000000/rotate-secret", nil, http.StatusNotFound, "not_found"},
		{"body with a field", "POST", "/api/v1/webhooks/" + c.SubscriptionID + "/rotate-secret", `{"secret":"whsec_x"}`, 0, "invalid_body"},
	})
}

func TestRotateSecretOverlapIsConfigurable(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{api: func(o *api.Options) { o.SecretOverlap = 2 * time.Hour }})
	c := s.create(t, "https://hooks.example.com/a")
	var rot struct {
		PreviousSecretValidUntil *int64 `json:"previousSecretValidUntil"`
	}
	s.call(t, "POST", "/api/v1/webhooks/"+c.SubscriptionID+"/rotate-secret", nil).ok(t, http.StatusOK, &rot)
	if rot.PreviousSecretValidUntil == nil {
		t.Fatal("no overlap")
	}
	if d := time.Until(time.Unix(*rot.PreviousSecretValidUntil, 0)); d < time.Hour || d > 3*time.Hour {
		t.Fatalf("overlap ends in %s, want 2 h", d)
	}
}

// blockedTestSend is an AdminStore whose test send runs until its request
// is cut off; nothing else is called.
type blockedTestSend struct {
	api.AdminStore
	entered chan struct{}
}

func (b blockedTestSend) SendTest(ctx context.Context, _ string) (dispatch.TestResult, error) {
	close(b.entered)
	<-ctx.Done()
	return dispatch.TestResult{}, ctx.Err()
}

// A request still running when the shutdown timeout ends (a test send to
// a receiver that does not answer) is cut off and logged, and Serve
// returns nil: the process stops as it was asked to, with exit 0, not as
// a failure.
func TestServeCutsOffRequestsAtTheShutdownTimeout(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{})
	srv, err := api.New(api.Options{Keys: []api.Key{{Key: testKey}}, Admin: blockedTestSend{entered: entered},
		ShutdownTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	go func() {
		req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/api/v1/webhooks/whk_1/test", nil)
		req.Header.Set("X-API-Key", testKey)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the test send did not start")
	}
	start := time.Now()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v, want nil after a shutdown that cut a request off", err)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("Serve returned after %s, before the 200ms shutdown timeout", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s of a 200ms shutdown timeout")
	}
}

// TestDeliveryRefusalsSayWhatIsWrong: the deliveries routes' refusals no
// other test reaches, each with its status, code and message, and the
// store unchanged.
func TestDeliveryRefusalsSayWhatIsWrong(t *testing.T) {
	t.Parallel()
	// No dispatcher: the delivery stays as the test sets it.
	s := newStack(t, stackConfig{noRun: true})
	c := s.create(t, "https://hooks.example.com/x", "auction.bid")
	ev := s.appendEvents(t, "auction.bid", "A1", 1)[0]
	id := mapper.DeliveryID(ev.Envelope, ev.ID, c.SubscriptionID)
	// A worker holds it now.
	s.exec(t, `UPDATE walhook.deliveries SET status = 'delivering', locked_until = now() + interval '1 hour' WHERE id = $1`, id)
	before := s.snapshot(t)
	for _, tc := range []struct {
		name, method, path string
		status             int
		code, msg          string
	}{
		{"deliveries limit zero", "GET", "/api/v1/webhooks/" + c.SubscriptionID + "/deliveries?limit=0",
			http.StatusBadRequest, "invalid_query", `limit "0": must be a whole number from 1 to ` + strconv.Itoa(dispatch.MaxListLimit)},
		{"deliveries limit not a number", "GET", "/api/v1/webhooks/" + c.SubscriptionID + "/deliveries?limit=all",
			http.StatusBadRequest, "invalid_query", `limit "all": must be a whole number from 1 to ` + strconv.Itoa(dispatch.MaxListLimit)},
		{"redeliver while in flight", "POST", "/api/v1/deliveries/" + id + "/redeliver",
			http.StatusConflict, "delivery_in_progress", `delivery "` + id + `": delivery is being attempted right now: try again once the attempt is recorded`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := s.call(t, tc.method, tc.path, nil)
			r.fails(t, tc.status, tc.code)
			if r.Error.Message != tc.msg {
				t.Errorf("message %q, want %q", r.Error.Message, tc.msg)
			}
			if after := s.snapshot(t); after != before {
				t.Fatalf("refused request changed the store:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// A body the server cannot read (chunked encoding broken mid-way) is
// refused as invalid_json naming the reason, and changes nothing.
func TestUnreadableBodyIsRefused(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{noRun: true})
	before := s.snapshot(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = conn.Write([]byte("POST /api/v1/webhooks/create HTTP/1.1\r\nHost: x\r\nX-API-Key: " + testKey +
		"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var env struct {
		Success bool `json:"success"`
		Error   struct {
			Code, Message string
		} `json:"error"`
	}
	if err := json.NewDecoder(res.Body).Decode(&env); err != nil {
		t.Fatal(err)
	}
	const want = "reading the request body: invalid byte in chunk length"
	if res.StatusCode != http.StatusBadRequest || env.Success || env.Error.Code != "invalid_json" || env.Error.Message != want {
		t.Fatalf("got %d %+v, want 400 invalid_json %q", res.StatusCode, env, want)
	}
	if after := s.snapshot(t); after != before {
		t.Fatalf("refused request changed the store:\nbefore %s\nafter  %s", before, after)
	}
}
