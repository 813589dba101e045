package api

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/walhook/walhook/dispatch"
)

// MaxDescription bounds an endpoint's description (characters).
const MaxDescription = 1000

// MaxURL bounds an endpoint's URL (bytes): a longer request line is
// refused by common servers (8 KiB in nginx and Apache), so every attempt
// would fail, and each list page would carry the URL.
const MaxURL = 8000

// MaxAuctions bounds an endpoint's auction filter (items), and
// MaxAuctionID one auction id (characters).
const (
	MaxAuctions  = 1000
	MaxAuctionID = 200
)

// webhook is an endpoint as every webhook route shows it. Timestamps are
// unix seconds; null when the thing never happened.
type webhook struct {
	ID                       string   `json:"id"`
	URL                      string   `json:"url"`
	Description              string   `json:"description"`
	Events                   []string `json:"events"`
	Auctions                 []string `json:"auctions"`
	Active                   bool     `json:"active"`
	Static                   bool     `json:"static"`
	DisabledReason           *string  `json:"disabledReason"`
	DisabledAt               *int64   `json:"disabledAt"`
	FailingSince             *int64   `json:"failingSince"`
	LastDelivery             *int64   `json:"lastDelivery"`
	LastAttemptAt            *int64   `json:"lastAttemptAt"`
	PreviousSecretValidUntil *int64   `json:"previousSecretValidUntil"`
	CreatedAt                int64    `json:"createdAt"`
	UpdatedAt                int64    `json:"updatedAt"`
}

func (s *Server) webhookView(e dispatch.Endpoint) webhook {
	w := webhook{
		ID: e.ID, URL: e.URL, Description: e.Description, Events: e.Events, Auctions: e.Auctions,
		Active: e.Active, Static: e.Static,
		DisabledAt: unix(e.DisabledAt), FailingSince: unix(e.FailingSince),
		LastDelivery: unix(e.LastDelivery), LastAttemptAt: unix(e.LastAttemptAt),
		CreatedAt: e.CreatedAt.Unix(), UpdatedAt: e.UpdatedAt.Unix(),
	}
	if !e.Active {
		r := e.DisabledReason
		w.DisabledReason = &r
	}
	if e.PreviousSecretUntil.After(s.now()) {
		w.PreviousSecretValidUntil = unix(e.PreviousSecretUntil)
	}
	return w
}

// createRequest is POST /api/v1/webhooks/create. Pointers tell "absent"
// from "empty".
type createRequest struct {
	URL         *string   `json:"url"`
	Events      *[]string `json:"events"`
	Auctions    *[]string `json:"auctions"`
	Description *string   `json:"description"`
	Secret      *string   `json:"secret"`
}

type createResponse struct {
	SubscriptionID string   `json:"subscriptionId"`
	URL            string   `json:"url"`
	Events         []string `json:"events"`
	Auctions       []string `json:"auctions"`
	Description    string   `json:"description"`
	Active         bool     `json:"active"`
	CreatedAt      int64    `json:"createdAt"`
	// Secret is shown here once; store it now.
	Secret string `json:"secret"`
}

func (s *Server) createWebhook(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if err := s.decode(w, r, &req, false); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.URL == nil || *req.URL == "" {
		s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidURL, "url is required"))
		return
	}
	if err := checkURLLength(*req.URL); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Events == nil || len(*req.Events) == 0 {
		s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidBody, `field "events" is required: a list of event types or "prefix.*" (GET /api/v1/events lists them)`))
		return
	}
	in := dispatch.EndpointInput{URL: *req.URL}
	var err error
	if in.Events, err = s.checkEvents(*req.Events); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Auctions != nil {
		if in.Auctions, err = checkAuctions(*req.Auctions); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if req.Description != nil {
		if err := checkDescription(*req.Description); err != nil {
			s.fail(w, r, err)
			return
		}
		in.Description = *req.Description
	}
	if req.Secret != nil {
		if *req.Secret == "" {
			s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidSecret, "secret is empty: omit it to have one generated"))
			return
		}
		in.Secret = *req.Secret
	}
	e, err := s.admin.CreateEndpoint(r.Context(), in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("api: webhook created", "id", e.ID)
	s.ok(w, http.StatusCreated, createResponse{
		SubscriptionID: e.ID, URL: e.URL, Events: e.Events, Auctions: e.Auctions,
		Description: e.Description, Active: e.Active, CreatedAt: e.CreatedAt.Unix(), Secret: e.Secret,
	})
}

type listResponse struct {
	Webhooks   []webhook `json:"webhooks"`
	Total      int       `json:"total"`
	NextCursor *string   `json:"nextCursor"`
}

func (s *Server) listWebhooks(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "limit", "cursor")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	limit, err := queryLimit(q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	eps, next, total, err := s.admin.ListEndpoints(r.Context(), dispatch.ListOptions{Limit: limit, Cursor: q.Get("cursor")})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := listResponse{Webhooks: make([]webhook, 0, len(eps)), Total: total}
	for _, e := range eps {
		out.Webhooks = append(out.Webhooks, s.webhookView(e))
	}
	if next != "" {
		out.NextCursor = &next
	}
	s.ok(w, http.StatusOK, out)
}

func (s *Server) getWebhook(w http.ResponseWriter, r *http.Request) {
	e, err := s.admin.GetEndpoint(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.ok(w, http.StatusOK, s.webhookView(e))
}

// updateRequest is PUT /api/v1/webhooks/{id}: every field optional.
type updateRequest struct {
	URL         *string   `json:"url"`
	Events      *[]string `json:"events"`
	Auctions    *[]string `json:"auctions"`
	Description *string   `json:"description"`
	Active      *bool     `json:"active"`
}

func (s *Server) updateWebhook(w http.ResponseWriter, r *http.Request) {
	var req updateRequest
	if err := s.decode(w, r, &req, false); err != nil {
		s.fail(w, r, err)
		return
	}
	p := dispatch.EndpointPatch{URL: req.URL, Description: req.Description, Active: req.Active}
	if req.URL != nil && *req.URL == "" {
		s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidURL, "url must not be empty"))
		return
	}
	if req.URL != nil {
		if err := checkURLLength(*req.URL); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if req.Events != nil {
		if len(*req.Events) == 0 {
			s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidBody, `field "events" must list at least one event type or "prefix.*"`))
			return
		}
		ev, err := s.checkEvents(*req.Events)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		p.Events = &ev
	}
	if req.Auctions != nil {
		au, err := checkAuctions(*req.Auctions)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		p.Auctions = &au
	}
	if req.Description != nil {
		if err := checkDescription(*req.Description); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	e, err := s.admin.UpdateEndpoint(r.Context(), r.PathValue("id"), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("api: webhook updated", "id", e.ID, "active", e.Active)
	s.ok(w, http.StatusOK, s.webhookView(e))
}

type deleteResponse struct {
	Success   bool   `json:"success"`
	DeletedID string `json:"deletedId"`
}

func (s *Server) deleteWebhook(w http.ResponseWriter, r *http.Request) {
	// No body (or {}), as for test and rotate-secret: a body naming
	// another endpoint or asking for something DELETE does not do is
	// refused, not ignored while this one is deleted.
	var req struct{}
	if err := s.decode(w, r, &req, true); err != nil {
		s.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	if err := s.admin.DeleteEndpoint(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("api: webhook deleted", "id", id)
	s.ok(w, http.StatusOK, deleteResponse{Success: true, DeletedID: id})
}

type rotateResponse struct {
	Secret string `json:"secret"`
	// PreviousSecretValidUntil: until then deliveries carry a signature
	// with the old secret too; null when there is no overlap.
	PreviousSecretValidUntil *int64 `json:"previousSecretValidUntil"`
}

func (s *Server) rotateSecret(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if err := s.decode(w, r, &req, true); err != nil {
		s.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	secret, until, err := s.admin.RotateSecret(r.Context(), id, s.overlap)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("api: webhook secret rotated", "id", id, "previous_valid_until", until)
	s.ok(w, http.StatusOK, rotateResponse{Secret: secret, PreviousSecretValidUntil: unix(until)})
}

// checkEvents validates event filters against the catalog: an exact type
// from it, "prefix.*" matching at least one of its types, or "*" (all).
// Duplicates are dropped, order kept.
func (s *Server) checkEvents(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	seen := map[string]bool{}
	for _, f := range in {
		if !s.knownEvent(f) {
			return nil, errorf(http.StatusBadRequest, CodeUnknownEvent,
				"unknown event %q: use a type from GET /api/v1/events, \"prefix.*\" matching one, or \"*\"", f)
		}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out, nil
}

func (s *Server) knownEvent(f string) bool { return FilterKnown(s.catalog, f) }

// FilterKnown reports whether event filter f selects something of
// catalog: an exact type from it, "prefix.*" matching at least one of its
// types, or "*".
func FilterKnown(catalog []CatalogEntry, f string) bool {
	if f == "*" {
		return true
	}
	prefix, wildcard := strings.CutSuffix(f, "*")
	if wildcard && (!strings.HasSuffix(prefix, ".") || len(prefix) < 2) {
		return false
	}
	for _, c := range catalog {
		if c.Type == f || (wildcard && strings.HasPrefix(c.Type, prefix)) {
			return true
		}
	}
	return false
}

func checkAuctions(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	seen := map[string]bool{}
	if len(in) > MaxAuctions {
		return nil, errorf(http.StatusBadRequest, CodeInvalidBody, `field "auctions" has %d items; at most %d`, len(in), MaxAuctions)
	}
	for i, a := range in {
		switch {
		case strings.TrimSpace(a) == "":
			return nil, errorf(http.StatusBadRequest, CodeInvalidBody, `field "auctions" item %d is empty`, i)
		case strings.ContainsRune(a, 0):
			return nil, errorf(http.StatusBadRequest, CodeInvalidBody, `field "auctions" item %d holds a NUL character`, i)
		case len([]rune(a)) > MaxAuctionID:
			return nil, errorf(http.StatusBadRequest, CodeInvalidBody, `field "auctions" item %d is %d characters; at most %d`, i, len([]rune(a)), MaxAuctionID)
		}
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out, nil
}

func checkURLLength(u string) error {
	if len(u) > MaxURL {
		return errorf(http.StatusBadRequest, CodeInvalidURL, "url is %d bytes; at most %d", len(u), MaxURL)
	}
	return nil
}

func checkDescription(d string) error {
	if n := len([]rune(d)); n > MaxDescription {
		return errorf(http.StatusBadRequest, CodeInvalidBody, `field "description" is %d characters; at most %d`, n, MaxDescription)
	}
	if strings.ContainsRune(d, 0) { // PostgreSQL text cannot hold it
		return errorf(http.StatusBadRequest, CodeInvalidBody, `field "description" holds a NUL character`)
	}
	return nil
}

func queryLimit(q url.Values) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > dispatch.MaxListLimit {
		return 0, errorf(http.StatusBadRequest, CodeInvalidQuery, "limit %q: must be a whole number from 1 to %d", v, dispatch.MaxListLimit)
	}
	return n, nil
}
