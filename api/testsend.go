package api

import "net/http"

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
	id := r.PathValue("id")
	res, err := s.admin.SendTest(r.Context(), id)
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
