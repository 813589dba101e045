package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/walhook/walhook/dispatch"
)

// delivery is one delivery as the history shows it.
type delivery struct {
	ID                 string  `json:"id"` // the X-Webhook-ID
	EventID            string  `json:"eventId"`
	WebhookID          string  `json:"webhookId"`
	EventType          string  `json:"eventType"`
	Status             string  `json:"status"`
	Attempts           int     `json:"attempts"`
	ResponseStatusCode *int    `json:"responseStatusCode"`
	ResponseTimeMs     *int64  `json:"responseTimeMs"`
	Error              *string `json:"error"`
	NextAttemptAt      *int64  `json:"nextAttemptAt"` // pending only
	CreatedAt          int64   `json:"createdAt"`
	UpdatedAt          int64   `json:"updatedAt"`
	DeliveredAt        *int64  `json:"deliveredAt"`
}

func deliveryView(d dispatch.Delivery) delivery {
	v := delivery{
		ID: d.ID, EventID: d.EventID, WebhookID: d.EndpointID, EventType: d.EventType, Status: d.Status,
		Attempts: d.Attempts, CreatedAt: d.CreatedAt.Unix(), UpdatedAt: d.UpdatedAt.Unix(),
		DeliveredAt: unix(d.DeliveredAt),
	}
	if d.LastStatusCode != 0 {
		c := d.LastStatusCode
		v.ResponseStatusCode = &c
	}
	// The last response's time goes with its status code: a redeliver
	// resets the attempts but keeps what the last response was.
	if d.Attempts > 0 || d.LastDuration > 0 || d.LastStatusCode != 0 {
		ms := d.LastDuration.Milliseconds()
		v.ResponseTimeMs = &ms
	}
	if d.LastError != "" {
		e := d.LastError
		v.Error = &e
	}
	if d.Status == "pending" {
		v.NextAttemptAt = unix(d.NextAttemptAt)
	}
	return v
}

type attempt struct {
	Attempt      int     `json:"attempt"`
	StartedAt    int64   `json:"startedAt"`
	DurationMs   int64   `json:"durationMs"`
	StatusCode   *int    `json:"statusCode"`
	Error        *string `json:"error"`
	ResponseBody string  `json:"responseBody"` // bounded prefix
	Signatures   int     `json:"signatures"`
}

type deliveriesResponse struct {
	Deliveries []delivery `json:"deliveries"`
	NextCursor *string    `json:"nextCursor"`
}

func (s *Server) listDeliveries(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "status", "since", "until", "limit", "cursor")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f := dispatch.DeliveryFilter{Status: q.Get("status"), Cursor: q.Get("cursor")}
	if f.Limit, err = queryLimit(q); err != nil {
		s.fail(w, r, err)
		return
	}
	if f.Status != "" && !slices.Contains(dispatch.DeliveryStatuses, f.Status) {
		s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidQuery, "status %q: must be one of %s", f.Status, strings.Join(dispatch.DeliveryStatuses, ", ")))
		return
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(p.name); v != "" {
			t, err := queryTime(v)
			if err != nil {
				s.fail(w, r, errorf(http.StatusBadRequest, CodeInvalidQuery, "%s: %v", p.name, err))
				return
			}
			*p.dst = t
		}
	}
	ds, next, err := s.admin.ListDeliveries(r.Context(), r.PathValue("id"), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := deliveriesResponse{Deliveries: make([]delivery, 0, len(ds))}
	for _, d := range ds {
		out.Deliveries = append(out.Deliveries, deliveryView(d))
	}
	if next != "" {
		out.NextCursor = &next
	}
	s.ok(w, http.StatusOK, out)
}

type deliveryResponse struct {
	Delivery delivery  `json:"delivery"`
	Attempts []attempt `json:"attempts"`
}

func (s *Server) getDelivery(w http.ResponseWriter, r *http.Request) {
	d, atts, err := s.admin.GetDelivery(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := deliveryResponse{Delivery: deliveryView(d), Attempts: make([]attempt, 0, len(atts))}
	for _, a := range atts {
		v := attempt{Attempt: a.Attempt, StartedAt: a.StartedAt.Unix(), DurationMs: a.Duration.Milliseconds(),
			ResponseBody: a.ResponseBody, Signatures: a.Signatures}
		if a.StatusCode != 0 {
			c := a.StatusCode
			v.StatusCode = &c
		}
		if a.Error != "" {
			e := a.Error
			v.Error = &e
		}
		out.Attempts = append(out.Attempts, v)
	}
	s.ok(w, http.StatusOK, out)
}

func (s *Server) redeliver(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if err := s.decode(w, r, &req, true); err != nil {
		s.fail(w, r, err)
		return
	}
	d, err := s.admin.Redeliver(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("api: delivery re-queued", "delivery", d.ID, "webhook", d.EndpointID)
	s.ok(w, http.StatusOK, deliveryView(d))
}

type recoverRequest struct {
	// Since is RFC 3339 text or unix seconds.
	Since json.RawMessage `json:"since"`
}

type recoverResponse struct {
	Requeued int   `json:"requeued"`
	Since    int64 `json:"since"`
}

func (s *Server) recoverWebhook(w http.ResponseWriter, r *http.Request) {
	var req recoverRequest
	if err := s.decode(w, r, &req, false); err != nil {
		s.fail(w, r, err)
		return
	}
	since, err := bodyTime("since", req.Since)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	n, err := s.admin.Recover(r.Context(), id, since)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("api: deliveries recovered", "webhook", id, "since", since, "requeued", n)
	s.ok(w, http.StatusOK, recoverResponse{Requeued: n, Since: since.Unix()})
}

// bodyTime reads a required time field given as an RFC 3339 string or unix
// seconds.
func bodyTime(field string, raw json.RawMessage) (time.Time, error) {
	v := strings.TrimSpace(string(raw))
	if v == "" || v == "null" {
		return time.Time{}, errorf(http.StatusBadRequest, CodeInvalidBody, "field %q is required (RFC 3339 or unix seconds)", field)
	}
	if v[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, errorf(http.StatusBadRequest, CodeInvalidBody, "field %q: %v", field, err)
		}
		v = s
	} else if (v[0] < '0' || v[0] > '9') && v[0] != '-' { // unix seconds before 1970 too, as in the history query
		return time.Time{}, errorf(http.StatusBadRequest, CodeInvalidBody, "field %q must be an RFC 3339 string or unix seconds, got %s", field, v)
	}
	t, err := parseTime(v)
	if err != nil {
		return time.Time{}, errorf(http.StatusBadRequest, CodeInvalidBody, "field %q: %v", field, err)
	}
	return t, nil
}
