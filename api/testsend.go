package api

import (
	"context"
	"net/http"
	"time"
)

// TestResult is the outcome of a test send.
type TestResult struct {
	DeliveryID string
	StatusCode int
	Duration   time.Duration
	Error      string
}

// Tester sends a "webhook.test" event to an endpoint now, through the real
// delivery path (signing, SSRF guard, timeout), recorded in its history.
type Tester interface {
	SendTest(ctx context.Context, endpointID string) (TestResult, error)
}

type testResponse struct {
	DeliveryID     string  `json:"deliveryId"`
	StatusCode     *int    `json:"statusCode"`
	ResponseTimeMs int64   `json:"responseTimeMs"`
	Error          *string `json:"error"`
}

// testWebhook reports the receiver's answer in data, with success true
// even when the receiver failed: the request (send a test) succeeded, and
// the error field says what the receiver did.
func (s *Server) testWebhook(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if err := s.decode(w, r, &req, true); err != nil {
		s.fail(w, r, err)
		return
	}
	if s.tester == nil {
		s.fail(w, r, errorf(http.StatusServiceUnavailable, CodeInternal, "test sends are not available in this process"))
		return
	}
	id := r.PathValue("id")
	if _, err := s.admin.GetEndpoint(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	res, err := s.tester.SendTest(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := testResponse{DeliveryID: res.DeliveryID, ResponseTimeMs: res.Duration.Milliseconds()}
	if res.StatusCode != 0 {
		c := res.StatusCode
		out.StatusCode = &c
	}
	if res.Error != "" {
		e := res.Error
		out.Error = &e
	}
	s.log.Info("api: test sent", "webhook", id, "delivery", res.DeliveryID, "status", res.StatusCode)
	s.ok(w, http.StatusOK, out)
}
