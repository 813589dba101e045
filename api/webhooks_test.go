package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/dispatch"
)

// webhookData is a webhook as the get, list and update routes show it.
type webhookData struct {
	ID                       string   `json:"id"`
	URL                      string   `json:"url"`
	Description              string   `json:"description"`
	Events                   []string `json:"events"`
	Auctions                 []string `json:"auctions"`
	Active                   bool     `json:"active"`
	Static                   bool     `json:"static"`
	DisabledReason           *string  `json:"disabledReason"`
	DisabledAt               *int64   `json:"disabledAt"`
	LastDelivery             *int64   `json:"lastDelivery"`
	PreviousSecretValidUntil *int64   `json:"previousSecretValidUntil"`
	CreatedAt                int64    `json:"createdAt"`
	Secret                   *string  `json:"secret"`
}

type listData struct {
	Webhooks   []webhookData `json:"webhooks"`
	Total      int           `json:"total"`
	NextCursor *string       `json:"nextCursor"`
}

func TestWebhookLifecycle(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	rc := newReceiver(t)

	var c created
	s.call(t, "POST", "/api/v1/webhooks/create", map[string]any{
		"url": rc.URL + "/hooks", "events": []string{"auction.bid", "auction.settled", "auction.bid"},
		"auctions": []string{"A1"}, "description": "the bidding desk",
	}).ok(t, http.StatusCreated, &c)
	if !strings.HasPrefix(c.SubscriptionID, "whk_") || len(c.SubscriptionID) != len("whk_")+16 {
		t.Fatalf("subscriptionId %q: want whk_ + 16 hex digits", c.SubscriptionID)
	}
	if !slices.Equal(c.Events, []string{"auction.bid", "auction.settled"}) || !slices.Equal(c.Auctions, []string{"A1"}) {
		t.Fatalf("events %v auctions %v: want the filters without the duplicate", c.Events, c.Auctions)
	}
	if !c.Active || c.URL != rc.URL+"/hooks" || c.Description != "the bidding desk" || c.CreatedAt == 0 {
		t.Fatalf("create returned %+v", c)
	}
	key, err := dispatch.DecodeSecret(c.Secret)
	if err != nil || len(key) != 32 {
		t.Fatalf("generated secret %q: %v (want whsec_ + base64 of 32 bytes)", c.Secret, err)
	}
	var stored string
	if err := s.pool.QueryRow(context.Background(), `SELECT secret FROM walhook.endpoints WHERE id = $1`, c.SubscriptionID).Scan(&stored); err != nil || stored != c.Secret {
		t.Fatalf("stored secret differs from the returned one (err %v)", err)
	}

	// The secret is shown once: no read route returns it.
	get := s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID, nil)
	var w webhookData
	get.ok(t, http.StatusOK, &w)
	if strings.Contains(string(get.Raw), c.Secret) || w.Secret != nil {
		t.Fatalf("GET shows the secret again: %s", get.Raw)
	}
	if w.ID != c.SubscriptionID || !w.Active || w.Static || w.DisabledReason != nil || w.LastDelivery != nil {
		t.Fatalf("GET returned %+v", w)
	}
	list := s.call(t, "GET", "/api/v1/webhooks", nil)
	var l listData
	list.ok(t, http.StatusOK, &l)
	if strings.Contains(string(list.Raw), c.Secret) {
		t.Fatal("list shows the secret")
	}
	if l.Total != 1 || len(l.Webhooks) != 1 || l.Webhooks[0].ID != c.SubscriptionID || l.NextCursor != nil {
		t.Fatalf("list returned %s", list.Raw)
	}

	// The filters apply: only auction.bid and auction.settled of auction A1.
	s.appendEvents(t, "auction.bid", "A2", 1)
	s.appendEvents(t, "auction.created", "A1", 1)
	want := s.appendEvents(t, "auction.bid", "A1", 1)[0]
	waitFor(t, "the matching event at the receiver", func() bool { return len(rc.requests()) == 1 })
	var body struct {
		Event     string `json:"event"`
		AuctionID string `json:"auction_id"`
	}
	if err := json.Unmarshal(rc.requests()[0].Body, &body); err != nil || body.Event != "auction.bid" || body.AuctionID != want.AuctionID {
		t.Fatalf("received %s (%v), want the auction.bid of A1", rc.requests()[0].Body, err)
	}
	if n := s.count(t, `SELECT count(*) FROM walhook.deliveries`); n != 1 {
		t.Fatalf("%d deliveries, want 1: the filters must keep the others out of the outbox", n)
	}

	// PUT changes only the fields it names.
	s.call(t, "PUT", "/api/v1/webhooks/"+c.SubscriptionID, map[string]any{
		"url": rc.URL + "/v2", "events": []string{"auction.*"}, "auctions": []string{},
	}).ok(t, http.StatusOK, &w)
	if w.URL != rc.URL+"/v2" || !slices.Equal(w.Events, []string{"auction.*"}) || len(w.Auctions) != 0 ||
		w.Description != "the bidding desk" || !w.Active {
		t.Fatalf("after PUT: %+v", w)
	}
	s.call(t, "PUT", "/api/v1/webhooks/"+c.SubscriptionID, map[string]any{"active": false}).ok(t, http.StatusOK, &w)
	if w.Active || w.DisabledReason == nil || *w.DisabledReason != "disabled by admin" || w.DisabledAt == nil {
		t.Fatalf("after PUT active=false: %+v", w)
	}
	s.call(t, "PUT", "/api/v1/webhooks/"+c.SubscriptionID, map[string]any{"active": true}).ok(t, http.StatusOK, &w)
	if !w.Active || w.DisabledReason != nil || w.DisabledAt != nil {
		t.Fatalf("after PUT active=true: %+v", w)
	}

	// A delivery of a matching event reaches the changed URL.
	s.appendEvents(t, "auction.created", "A9", 1)
	waitFor(t, "the event at the receiver", func() bool { return len(rc.requests()) == 2 })
	if got := rc.requests()[1]; !strings.HasPrefix(string(got.Body), `{"event":"auction.created"`) {
		t.Fatalf("second request %s, want the auction.created event", got.Body)
	}

	var del struct {
		Success   bool   `json:"success"`
		DeletedID string `json:"deletedId"`
	}
	checkRefused(t, s, []badCase{
		{"delete with a body naming another", "DELETE", "/api/v1/webhooks/" + c.SubscriptionID, `{"id":"whk_0000000000000000"}`, 0, "invalid_body"},
		{"delete with a body that is not JSON", "DELETE", "/api/v1/webhooks/" + c.SubscriptionID, `id=x`, 0, "invalid_json"},
	})
	s.call(t, "DELETE", "/api/v1/webhooks/"+c.SubscriptionID, `{}`).ok(t, http.StatusOK, &del)
	if !del.Success || del.DeletedID != c.SubscriptionID {
		t.Fatalf("delete returned %+v", del)
	}
	if n := s.count(t, `SELECT count(*) FROM walhook.endpoints`); n != 0 {
		t.Fatalf("%d endpoints after delete", n)
	}
	if n := s.count(t, `SELECT count(*) FROM walhook.deliveries`); n != 0 {
		t.Fatalf("%d deliveries of the deleted endpoint remain", n)
	}
	s.call(t, "GET", "/api/v1/webhooks/"+c.SubscriptionID, nil).fails(t, http.StatusNotFound, "not_found")
	s.call(t, "DELETE", "/api/v1/webhooks/"+c.SubscriptionID, nil).fails(t, http.StatusNotFound, "not_found")
}

func TestCreateWithSuppliedSecret(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	secret := dispatch.NewSecret()
	var c created
	s.call(t, "POST", "/api/v1/webhooks/create", map[string]any{
		"url": "https://hooks.example.com/in", "events": []string{"*"}, "secret": secret,
	}).ok(t, http.StatusCreated, &c)
	if c.Secret != secret {
		t.Fatalf("secret %q, want the supplied one", c.Secret)
	}
}

func TestListWebhooksPaginates(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	var want []string
	for i := 0; i < 5; i++ {
		want = append(want, s.create(t, "https://hooks.example.com/"+string(rune('a'+i))).SubscriptionID)
	}
	var got []string
	cursor := ""
	pages := 0
	for {
		path := "/api/v1/webhooks?limit=2"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		var l listData
		s.call(t, "GET", path, nil).ok(t, http.StatusOK, &l)
		pages++
		if l.Total != 5 {
			t.Fatalf("total %d, want 5", l.Total)
		}
		if len(l.Webhooks) > 2 {
			t.Fatalf("page of %d, limit 2", len(l.Webhooks))
		}
		for _, w := range l.Webhooks {
			got = append(got, w.ID)
		}
		if l.NextCursor == nil {
			break
		}
		cursor = *l.NextCursor
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	if pages != 3 || !slices.Equal(got, want) {
		t.Fatalf("%d pages with %v, want 3 pages with %v (creation order, each once)", pages, got, want)
	}
}

func TestStaticEndpointsAreReadOnly(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	err := s.d.SyncStaticEndpoints(context.Background(), []dispatch.StaticEndpoint{{
		Name: "ops", URL: "https://ops.example.com/hook", Secret: dispatch.NewSecret(), Events: []string{"auction.*"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var l listData
	s.call(t, "GET", "/api/v1/webhooks", nil).ok(t, http.StatusOK, &l)
	if len(l.Webhooks) != 1 || l.Webhooks[0].ID != "static:ops" || !l.Webhooks[0].Static {
		t.Fatalf("list: %+v, want the static endpoint marked static", l.Webhooks)
	}
	before := s.snapshot(t)
	s.call(t, "PUT", "/api/v1/webhooks/static:ops", map[string]any{"url": "https://other.example.com/hook"}).fails(t, http.StatusConflict, "static_endpoint")
	s.call(t, "PUT", "/api/v1/webhooks/static:ops", map[string]any{"active": false, "events": []string{"auction.bid"}}).fails(t, http.StatusConflict, "static_endpoint")
	s.call(t, "DELETE", "/api/v1/webhooks/static:ops", nil).fails(t, http.StatusConflict, "static_endpoint")
	s.call(t, "POST", "/api/v1/webhooks/static:ops/rotate-secret", nil).fails(t, http.StatusConflict, "static_endpoint")
	if after := s.snapshot(t); after != before {
		t.Fatalf("a refused change to a static endpoint changed the store:\n%s\n%s", before, after)
	}
}

// A static endpoint that walhook disabled while running (a 410, the
// disable rule) is re-enabled by an admin as an API one is, and its
// missed deliveries recovered; an admin may pause one too, and a restart
// (the file synced again) keeps either. One the file disables is the
// file's to turn on.
func TestStaticEndpointTurnedOnAndOff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, stackConfig{noRun: true})
	static := []dispatch.StaticEndpoint{{Name: "ops", URL: "https://ops.example.com/hook", Secret: dispatch.NewSecret()}}
	if err := s.d.SyncStaticEndpoints(ctx, static); err != nil {
		t.Fatal(err)
	}
	s.appendEvents(t, "auction.bid", "A1", 2)
	s.exec(t, `UPDATE walhook.endpoints SET active = false, disabled_reason = 'receiver answered 410 Gone', disabled_at = now() WHERE id = 'static:ops'`)
	s.exec(t, `UPDATE walhook.deliveries SET status = 'skipped' WHERE endpoint_id = 'static:ops'`)
	var w webhookData
	s.call(t, "PUT", "/api/v1/webhooks/static:ops", map[string]any{"active": true}).ok(t, http.StatusOK, &w)
	if !w.Active || w.DisabledReason != nil {
		t.Fatalf("re-enabled static endpoint: %+v, want active with no reason", w)
	}
	var rec struct {
		Requeued int `json:"requeued"`
	}
	s.call(t, "POST", "/api/v1/webhooks/static:ops/recover", map[string]any{"since": 0}).ok(t, http.StatusOK, &rec)
	if rec.Requeued != 2 {
		t.Fatalf("recover after the re-enable requeued %d, want 2", rec.Requeued)
	}
	if err := s.d.SyncStaticEndpoints(ctx, static); err != nil {
		t.Fatal(err)
	}
	s.call(t, "GET", "/api/v1/webhooks/static:ops", nil).ok(t, http.StatusOK, &w)
	if !w.Active {
		t.Fatal("a restart turned the re-enabled static endpoint off again")
	}

	// Paused by an admin: stays paused across a restart.
	s.call(t, "PUT", "/api/v1/webhooks/static:ops", map[string]any{"active": false}).ok(t, http.StatusOK, &w)
	if err := s.d.SyncStaticEndpoints(ctx, static); err != nil {
		t.Fatal(err)
	}
	s.call(t, "GET", "/api/v1/webhooks/static:ops", nil).ok(t, http.StatusOK, &w)
	if w.Active || w.DisabledReason == nil || *w.DisabledReason != "disabled by admin" {
		t.Fatalf("paused static endpoint after a restart: %+v, want disabled by admin", w)
	}

	// Disabled by the file: the file turns it on.
	if err := s.d.SyncStaticEndpoints(ctx, []dispatch.StaticEndpoint{{Name: "cfg", URL: "https://cfg.example.com/hook", Secret: dispatch.NewSecret(), Disabled: true}}); err != nil {
		t.Fatal(err)
	}
	before := s.snapshot(t)
	r := s.call(t, "PUT", "/api/v1/webhooks/static:cfg", map[string]any{"active": true})
	r.fails(t, http.StatusConflict, "static_endpoint")
	if !strings.Contains(string(r.Raw), "disabled: false") {
		t.Errorf("turning on an endpoint the file disables: %s, want it to say to set disabled: false in the file", r.Raw)
	}
	if after := s.snapshot(t); after != before {
		t.Fatalf("a refused re-enable changed the store:\n%s\n%s", before, after)
	}
}

// badCase is one refused request: what it sends and the code it must get.
type badCase struct {
	name   string
	method string
	path   string
	body   any
	status int
	code   string
}

// checkRefused runs each case and asserts its status and code, and that the
// store is byte for byte what it was. It first waits until no delivery is
// being attempted: a 2xx is written by the dispatcher's recorder a few
// milliseconds after the receiver has it, and that write is not the
// refused request's doing.
func checkRefused(t *testing.T, s *stack, cases []badCase) {
	t.Helper()
	waitFor(t, "deliveries in flight to be recorded", func() bool {
		return s.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivering'`) == 0
	})
	before := s.snapshot(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status := c.status
			if status == 0 {
				status = http.StatusBadRequest
			}
			r := s.call(t, c.method, c.path, c.body)
			r.fails(t, status, c.code)
			if after := s.snapshot(t); after != before {
				t.Fatalf("refused request changed the store:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	s.create(t, "https://hooks.example.com/existing")
	const p = "/api/v1/webhooks/create"
	ok := `"url":"https://hooks.example.com/x","events":["auction.bid"]`
	huge := `{` + ok + `,"description":"` + strings.Repeat("x", 1<<20) + `"}`
	checkRefused(t, s, []badCase{
		{"malformed json", "POST", p, `{"url": "https://hooks.example.com/x", "events": [`, 0, "invalid_json"},
		{"not json", "POST", p, `url=https://hooks.example.com`, 0, "invalid_json"},
		{"empty body", "POST", p, ``, 0, "invalid_json"},
		{"two objects", "POST", p, `{` + ok + `}{` + ok + `}`, 0, "invalid_json"},
		{"trailing garbage", "POST", p, `{` + ok + `} x`, 0, "invalid_json"},
		{"array body", "POST", p, `[{` + ok + `}]`, 0, "invalid_body"},
		{"unknown field", "POST", p, `{` + ok + `,"active":true}`, 0, "invalid_body"},
		{"url wrong type", "POST", p, `{"url":42,"events":["auction.bid"]}`, 0, "invalid_body"},
		{"events wrong type", "POST", p, `{"url":"https://hooks.example.com/x","events":"auction.bid"}`, 0, "invalid_body"},
		{"events item wrong type", "POST", p, `{"url":"https://hooks.example.com/x","events":[1]}`, 0, "invalid_body"},
		{"auctions wrong type", "POST", p, `{` + ok + `,"auctions":"A1"}`, 0, "invalid_body"},
		{"description wrong type", "POST", p, `{` + ok + `,"description":5}`, 0, "invalid_body"},
		{"secret wrong type", "POST", p, `{` + ok + `,"secret":true}`, 0, "invalid_body"},
		{"body over 1 MiB", "POST", p, huge, 0, "body_too_large"},
		{"url missing", "POST", p, `{"events":["auction.bid"]}`, 0, "invalid_url"},
		{"url empty", "POST", p, `{"url":"","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url not https", "POST", p, `{"url":"http://hooks.example.com/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url private address", "POST", p, `{"url":"https://10.1.2.3/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url metadata address", "POST", p, `{"url":"https://169.254.169.254/latest/meta-data","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url ipv6 loopback", "POST", p, `{"url":"https://[::1]/x","events":["auction.bid"]}`, 0, "invalid_url"},
		// IPv4 in the forms inet_aton, curl and browsers read (127.0.0.1
		// here): no host name ends in a number, and the Go resolver looks
		// them up in DNS, so every attempt would fail "no such host".
		{"url decimal ipv4", "POST", p, `{"url":"https://2130706433/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url hex ipv4", "POST", p, `{"url":"https://0x7f000001/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url octal ipv4", "POST", p, `{"url":"https://0177.0.0.1/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url short ipv4", "POST", p, `{"url":"https://127.1/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url too long", "POST", p, `{"url":"https://hooks.example.com/` + strings.Repeat("a", api.MaxURL) + `","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url ipv4 with a trailing dot", "POST", p, `{"url":"https://10.1.2.3./x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url other scheme", "POST", p, `{"url":"ftp://hooks.example.com/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url with credentials", "POST", p, `{"url":"https://u:p@hooks.example.com/x","events":["auction.bid"]}`, 0, "invalid_url"},
		{"url relative", "POST", p, `{"url":"/hooks","events":["auction.bid"]}`, 0, "invalid_url"},
		{"events missing", "POST", p, `{"url":"https://hooks.example.com/x"}`, 0, "invalid_body"},
		{"events empty", "POST", p, `{"url":"https://hooks.example.com/x","events":[]}`, 0, "invalid_body"},
		{"unknown event", "POST", p, `{"url":"https://hooks.example.com/x","events":["auction.bid","auction.deleted"]}`, 0, "unknown_event"},
		{"unknown prefix", "POST", p, `{"url":"https://hooks.example.com/x","events":["member.*"]}`, 0, "unknown_event"},
		{"prefix without dot", "POST", p, `{"url":"https://hooks.example.com/x","events":["auction*"]}`, 0, "unknown_event"},
		{"empty event", "POST", p, `{"url":"https://hooks.example.com/x","events":[""]}`, 0, "unknown_event"},
		{"empty auction", "POST", p, `{` + ok + `,"auctions":[" "]}`, 0, "invalid_body"},
		{"description too long", "POST", p, `{` + ok + `,"description":"` + strings.Repeat("é", 1001) + `"}`, 0, "invalid_body"},
		{"description with NUL", "POST", p, `{` + ok + `,"description":"a\u0000b"}`, 0, "invalid_body"},
		{"auction with NUL", "POST", p, `{` + ok + `,"auctions":["A1","\u0000"]}`, 0, "invalid_body"},
		{"auction id too long", "POST", p, `{` + ok + `,"auctions":["` + strings.Repeat("a", 201) + `"]}`, 0, "invalid_body"},
		{"too many auctions", "POST", p, `{` + ok + `,"auctions":["a"` + strings.Repeat(`,"a"`, 1000) + `]}`, 0, "invalid_body"},
		{"secret empty", "POST", p, `{` + ok + `,"secret":""}`, 0, "invalid_secret"},
		{"secret without prefix", "POST", p, `{` + ok + `,"secret":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `"}`, 0, "invalid_secret"},
		{"secret too short", "POST", p, `{` + ok + `,"secret":"whsec_` + base64.StdEncoding.EncodeToString(make([]byte, 8)) + `"}`, 0, "invalid_secret"},
		{"secret not base64", "POST", p, `{` + ok + `,"secret":"whsec_!!!not-base64!!!"}`, 0, "invalid_secret"},
	})
}

func TestUpdateRefusesBadInput(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	id := s.create(t, "https://hooks.example.com/existing").SubscriptionID
	p := "/api/v1/webhooks/" + id
	checkRefused(t, s, []badCase{
		{"malformed json", "PUT", p, `{"active": tru`, 0, "invalid_json"},
		{"empty body", "PUT", p, ``, 0, "invalid_json"},
		{"unknown field", "PUT", p, `{"secret":"whsec_x"}`, 0, "invalid_body"},
		{"active wrong type", "PUT", p, `{"active":"yes"}`, 0, "invalid_body"},
		{"events wrong type", "PUT", p, `{"events":{"auction.bid":true}}`, 0, "invalid_body"},
		{"url wrong type", "PUT", p, `{"url":["https://hooks.example.com"]}`, 0, "invalid_body"},
		{"body over 1 MiB", "PUT", p, `{"description":"` + strings.Repeat("x", 1<<20) + `"}`, 0, "body_too_large"},
		{"url empty", "PUT", p, `{"url":""}`, 0, "invalid_url"},
		{"url not https", "PUT", p, `{"url":"http://hooks.example.com/x"}`, 0, "invalid_url"},
		{"url private", "PUT", p, `{"url":"https://192.168.1.1/x"}`, 0, "invalid_url"},
		{"url decimal ipv4", "PUT", p, `{"url":"https://3232235777/x"}`, 0, "invalid_url"},
		{"url too long", "PUT", p, `{"url":"https://hooks.example.com/` + strings.Repeat("a", api.MaxURL) + `"}`, 0, "invalid_url"},
		{"events empty", "PUT", p, `{"events":[]}`, 0, "invalid_body"},
		{"description with NUL", "PUT", p, `{"description":"\u0000"}`, 0, "invalid_body"},
		{"auction with NUL", "PUT", p, `{"auctions":["x\u0000"]}`, 0, "invalid_body"},
		{"unknown event", "PUT", p, `{"events":["auction.exploded"]}`, 0, "unknown_event"},
		{"valid fields with one bad", "PUT", p, `{"url":"https://hooks.example.com/new","events":["nope"]}`, 0, "unknown_event"},
		{"description too long", "PUT", p, `{"description":"` + strings.Repeat("d", 1001) + `"}`, 0, "invalid_body"},
		{"unknown id", "PUT", "/api/v1/webhooks/whk_0000000000000000", `{"active":false}`, http.StatusNotFound, "not_found"},
	})
}

func TestListRefusesBadQuery(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	id := s.create(t, "https://hooks.example.com/existing").SubscriptionID
	// A cursor that decodes but holds a time PostgreSQL cannot represent.
	farCursor := base64.RawURLEncoding.EncodeToString([]byte("-9223372036854775808:whk_x"))
	checkRefused(t, s, []badCase{
		{"limit zero", "GET", "/api/v1/webhooks?limit=0", nil, 0, "invalid_query"},
		{"limit too big", "GET", "/api/v1/webhooks?limit=100000", nil, 0, "invalid_query"},
		{"limit not a number", "GET", "/api/v1/webhooks?limit=ten", nil, 0, "invalid_query"},
		{"cursor garbage", "GET", "/api/v1/webhooks?cursor=%%%", nil, 0, "invalid_query"},
		{"cursor not ours", "GET", "/api/v1/webhooks?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("hello")), nil, 0, "invalid_query"},
		{"cursor out of range", "GET", "/api/v1/webhooks?cursor=" + farCursor, nil, 0, "invalid_query"},
		{"deliveries cursor out of range", "GET", "/api/v1/webhooks/" + id + "/deliveries?cursor=" + farCursor, nil, 0, "invalid_query"},
		{"deliveries status unknown", "GET", "/api/v1/webhooks/" + id + "/deliveries?status=lost", nil, 0, "invalid_query"},
		{"deliveries since garbage", "GET", "/api/v1/webhooks/" + id + "/deliveries?since=yesterday", nil, 0, "invalid_query"},
		{"deliveries until garbage", "GET", "/api/v1/webhooks/" + id + "/deliveries?until=2026-13-01T00:00:00Z", nil, 0, "invalid_query"},
		{"deliveries since out of range", "GET", "/api/v1/webhooks/" + id + "/deliveries?since=99999999999999", nil, 0, "invalid_query"},
		{"unknown parameter", "GET", "/api/v1/webhooks?page=2", nil, 0, "invalid_query"},
		{"deliveries misspelt parameter", "GET", "/api/v1/webhooks/" + id + "/deliveries?stauts=failed", nil, 0, "invalid_query"},
		{"deliveries repeated parameter", "GET", "/api/v1/webhooks/" + id + "/deliveries?status=failed&status=skipped", nil, 0, "invalid_query"},
		{"deliveries unknown webhook", "GET", "/api/v1/webhooks/whk_0000000000000000/deliveries", nil, http.StatusNotFound, "not_found"},
		// PostgreSQL text holds neither NUL nor invalid UTF-8 (SQLSTATE
		// 22021): such a cursor is not one of ours, not a store failure.
		{"cursor with invalid UTF-8", "GET", "/api/v1/webhooks?cursor=" + badTextCursor, nil, 0, "invalid_query"},
		{"cursor with NUL", "GET", "/api/v1/webhooks?cursor=" + nulCursor, nil, 0, "invalid_query"},
		{"deliveries cursor with invalid UTF-8", "GET", "/api/v1/webhooks/" + id + "/deliveries?cursor=" + badTextCursor, nil, 0, "invalid_query"},
		{"deliveries cursor with NUL", "GET", "/api/v1/webhooks/" + id + "/deliveries?cursor=" + nulCursor, nil, 0, "invalid_query"},
	})
}

// Cursors that decode to a valid time and an id PostgreSQL text cannot hold.
var (
	badTextCursor = base64.RawURLEncoding.EncodeToString([]byte("1:\xff"))
	nulCursor     = base64.RawURLEncoding.EncodeToString([]byte("1:whk_\x00"))
)

// An id holding NUL or invalid UTF-8 names no row (PostgreSQL text cannot
// hold it): every route taking one answers 404, as for any unknown id,
// rather than passing it to a query that fails with 500.
func TestIDsThatNameNoRowAreNotFound(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	s.create(t, "https://hooks.example.com/existing")
	var cases []badCase
	for _, id := range []string{"%00", "whk_%00", "%ff", "whk_%c3%28"} {
		for _, c := range []struct {
			method, path string
			body         any
		}{
			{"GET", "/api/v1/webhooks/" + id, nil},
			{"PUT", "/api/v1/webhooks/" + id, `{"active":false}`},
			{"PUT", "/api/v1/webhooks/" + id, `{"active":true}`},
			{"DELETE", "/api/v1/webhooks/" + id, nil},
			{"POST", "/api/v1/webhooks/" + id + "/test", nil},
			{"POST", "/api/v1/webhooks/" + id + "/rotate-secret", nil},
			{"POST", "/api/v1/webhooks/" + id + "/recover", `{"since":0}`},
			{"GET", "/api/v1/webhooks/" + id + "/deliveries", nil},
			{"GET", "/api/v1/webhooks/" + id + "/deliveries?status=failed&cursor=" +
				base64.RawURLEncoding.EncodeToString([]byte("1:whk_0")), nil},
			{"GET", "/api/v1/deliveries/" + id, nil},
			{"POST", "/api/v1/deliveries/" + id + "/redeliver", nil},
		} {
			cases = append(cases, badCase{c.method + " " + c.path, c.method, c.path, c.body, http.StatusNotFound, "not_found"})
		}
	}
	checkRefused(t, s, cases)
}

// Bodies are read as strictly as docs/api.md promises: one JSON object
// whose keys are the fields' exact names, each given once. encoding/json
// alone matches names case-insensitively (with Unicode folding: "ſ" is
// "s"), lets a repeated key win silently, and takes null for an empty
// object.
func TestBodiesAreStrictObjects(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	id := s.create(t, "https://hooks.example.com/existing").SubscriptionID
	const create = "/api/v1/webhooks/create"
	update := "/api/v1/webhooks/" + id
	ev := `"events":["auction.bid"]`
	for _, c := range []struct {
		name, method, path, body string
		want                     string // in the message
	}{
		{"create null", "POST", create, `null`, "must be a JSON object, got null"},
		{"update null", "PUT", update, ` null `, "must be a JSON object, got null"},
		{"test null", "POST", update + "/test", `null`, "must be a JSON object, got null"},
		{"rotate null", "POST", update + "/rotate-secret", `null`, "must be a JSON object, got null"},
		{"recover null", "POST", update + "/recover", `null`, "must be a JSON object, got null"},
		{"redeliver null", "POST", "/api/v1/deliveries/d-1/redeliver", `null`, "must be a JSON object, got null"},
		{"create upper-case key", "POST", create, `{"URL":"https://hooks.example.com/x",` + ev + `}`, `"URL"`},
		{"create mixed-case key", "POST", create, `{"url":"https://hooks.example.com/x","Events":["auction.bid"]}`, `"Events"`},
		{"create folded key", "POST", create, `{"url":"https://hooks.example.com/x",` + ev + `,"\u017fecret":"whsec_x"}`, `"ſecret"`},
		{"update upper-case key", "PUT", update, `{"ACTIVE":false}`, `"ACTIVE"`},
		{"recover mixed-case key", "POST", update + "/recover", `{"Since":0}`, `"Since"`},
		{"create duplicate url", "POST", create, `{"url":"https://hooks.example.com/x",` + ev + `,"url":"https://evil.example.com/x"}`, `"url" is given twice`},
		{"update duplicate active", "PUT", update, `{"active":false,"active":true}`, `"active" is given twice`},
		{"update duplicate by case", "PUT", update, `{"url":"https://hooks.example.com/a","URL":"https://hooks.example.com/b"}`, `"URL"`},
		{"recover duplicate since", "POST", update + "/recover", `{"since":0,"since":1}`, `"since" is given twice`},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := s.snapshot(t)
			r := s.call(t, c.method, c.path, c.body)
			r.fails(t, http.StatusBadRequest, "invalid_body")
			if !strings.Contains(r.Error.Message, c.want) {
				t.Errorf("message %q, want it to contain %s", r.Error.Message, c.want)
			}
			if after := s.snapshot(t); after != before {
				t.Fatalf("refused request changed the store:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	// The exact spelling, once each, still works.
	s.call(t, "PUT", update, `{"description":"ok","active":true}`).ok(t, http.StatusOK, nil)
	s.call(t, "POST", update+"/test", `{}`).ok(t, http.StatusOK, nil)
}

// A request whose store work does not finish within StoreTimeout — here a
// lock a DBA's migration holds on walhook's endpoints table — answers 503
// store_unavailable with Retry-After instead of hanging until the client
// gives up; once the lock is gone the same request works.
func TestStoreTimeout(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{noRun: true, api: func(o *api.Options) { o.StoreTimeout = 300 * time.Millisecond }})
	id := s.create(t, "https://hooks.example.com/ok").SubscriptionID
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `LOCK TABLE walhook.endpoints IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ method, path string }{{"GET", "/api/v1/webhooks"}, {"GET", "/api/v1/webhooks/" + id}} {
		r := s.call(t, c.method, c.path, nil)
		if r.Status != http.StatusServiceUnavailable || r.Error == nil || r.Error.Code != api.CodeStoreUnavailable ||
			r.Header.Get("Retry-After") == "" || !strings.Contains(r.Error.Message, "the store did not answer within 300ms") {
			t.Errorf("%s %s with the table locked: %d %s, want 503 %s with Retry-After", c.method, c.path, r.Status, r.Raw, api.CodeStoreUnavailable)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if r := s.call(t, "GET", "/api/v1/webhooks/"+id, nil); r.Status != http.StatusOK {
		t.Errorf("after the lock: %d %s", r.Status, r.Raw)
	}
}

// Routes that take no query parameters refuse one, as the list routes
// refuse one they do not know (docs/api.md, Strict input): ignored, a
// parameter the caller believes in silently does nothing — a rotation
// with ?overlap=0 after a leak would leave the leaked secret signing for
// a day, a DELETE ?dry_run=true would delete.
func TestRoutesWithoutParametersRefuseQuery(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackConfig{})
	id := s.create(t, "https://hooks.example.com/existing").SubscriptionID
	const dl = "6f1d3c2b-9a8e-8c7d-b6a5-4f3e2d1c0b9a" // refused before it is looked up
	checkRefused(t, s, []badCase{
		{"create", "POST", "/api/v1/webhooks/create?active=false", `{"url":"https://hooks.example.com/x","events":["auction.bid"]}`, 0, "invalid_query"},
		{"get", "GET", "/api/v1/webhooks/" + id + "?fields=url", nil, 0, "invalid_query"},
		{"update", "PUT", "/api/v1/webhooks/" + id + "?active=false", `{"description":"x"}`, 0, "invalid_query"},
		{"delete", "DELETE", "/api/v1/webhooks/" + id + "?dry_run=true", nil, 0, "invalid_query"},
		{"test", "POST", "/api/v1/webhooks/" + id + "/test?event=auction.bid", nil, 0, "invalid_query"},
		{"recover", "POST", "/api/v1/webhooks/" + id + "/recover?until=2026-01-02T00:00:00Z", `{"since":0}`, 0, "invalid_query"},
		{"rotate", "POST", "/api/v1/webhooks/" + id + "/rotate-secret?overlap=0", nil, 0, "invalid_query"},
		{"delivery", "GET", "/api/v1/deliveries/" + dl + "?x=1", nil, 0, "invalid_query"},
		{"redeliver", "POST", "/api/v1/deliveries/" + dl + "/redeliver?force=true", nil, 0, "invalid_query"},
		{"events", "GET", "/api/v1/events?prefix=auction", nil, 0, "invalid_query"},
		{"status", "GET", "/api/v1/status?endpoint=" + id, nil, 0, "invalid_query"},
		{"malformed", "GET", "/api/v1/events?%zz", nil, 0, "invalid_query"},
	})
}
