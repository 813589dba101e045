package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/dispatch"
)

// Error codes: stable, machine-readable, documented in docs/api.md. A client
// switches on these, never on the message.
const (
	CodeInvalidJSON        = "invalid_json"         // 400: not JSON, or more than one value
	CodeInvalidBody        = "invalid_body"         // 400: unknown field, wrong type, missing or bad value
	CodeBodyTooLarge       = "body_too_large"       // 400: over the body limit (1 MiB)
	CodeInvalidQuery       = "invalid_query"        // 400: a bad query parameter (limit, cursor, status, since, until)
	CodeInvalidURL         = "invalid_url"          // 400: refused by the delivery URL policy
	CodeUnknownEvent       = "unknown_event"        // 400: an event filter matching nothing in the catalog
	CodeInvalidSecret      = "invalid_secret"       // 400: a supplied secret that is not whsec_ + base64
	CodeUnauthorized       = "unauthorized"         // 401: missing or wrong X-API-Key
	CodeNotFound           = "not_found"            // 404: no such webhook, delivery or route
	CodeMethodNotAllowed   = "method_not_allowed"   // 405: the route exists with other methods (see Allow)
	CodeStaticEndpoint     = "static_endpoint"      // 409: endpoints from the config file are read-only
	CodeEndpointDisabled   = "endpoint_disabled"    // 409: re-enable the endpoint first
	CodeDeliveryInProgress = "delivery_in_progress" // 409: a worker is attempting it right now
	CodeTestSend           = "test_send"            // 409: redeliver of a test send (send a new test)
	CodeRateLimited        = "rate_limited"         // 429: see Retry-After
	CodeNotReady           = "not_ready"            // 503: /readyz while not ready
	CodeStoreUnavailable   = "store_unavailable"    // 503: the store did not answer in time (see Retry-After)
	CodeInternal           = "internal"             // 500: logged; the message says nothing more
)

// Error is an API error: an HTTP status, a stable code and a message for
// people.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

type envelope struct {
	Success   bool       `json:"success"`
	Data      any        `json:"data,omitempty"`
	Error     *errorBody `json:"error,omitempty"`
	Timestamp int64      `json:"timestamp"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (s *Server) writeJSON(w http.ResponseWriter, status int, v envelope) {
	v.Timestamp = s.now().Unix()
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("api: encode response", "err", err)
		status = http.StatusInternalServerError
		b = []byte(`{"success":false,"error":{"code":"internal","message":"internal error"},"timestamp":0}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func (s *Server) ok(w http.ResponseWriter, status int, data any) {
	s.writeJSON(w, status, envelope{Success: true, Data: data})
}

// fail writes err as an error envelope. Store errors are mapped to codes
// here; anything unknown is logged and reported as internal, without detail
// (it may name tables or hosts).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	switch {
	case errors.As(err, &e):
	case errors.Is(err, dispatch.ErrNotFound):
		e = &Error{http.StatusNotFound, CodeNotFound, err.Error()}
	case errors.Is(err, dispatch.ErrStaticEndpoint):
		e = &Error{http.StatusConflict, CodeStaticEndpoint, err.Error()}
	case errors.Is(err, dispatch.ErrEndpointInactive):
		e = &Error{http.StatusConflict, CodeEndpointDisabled, err.Error() + ": re-enable it with PUT {\"active\": true} first"}
	case errors.Is(err, dispatch.ErrDeliveryInFlight):
		e = &Error{http.StatusConflict, CodeDeliveryInProgress, err.Error() + ": try again once the attempt is recorded"}
	case errors.Is(err, dispatch.ErrTestSend):
		e = &Error{http.StatusConflict, CodeTestSend, err.Error()}
	case errors.Is(err, dispatch.ErrInvalidURL):
		e = &Error{http.StatusBadRequest, CodeInvalidURL, err.Error()}
	case errors.Is(err, dispatch.ErrBadSecret):
		e = &Error{http.StatusBadRequest, CodeInvalidSecret, err.Error()}
	case errors.Is(err, dispatch.ErrInvalidCursor):
		e = &Error{http.StatusBadRequest, CodeInvalidQuery, "cursor: not a cursor this API returned"}
	case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() != nil:
		// Options.StoreTimeout passed: the store hangs, or a lock on
		// walhook's tables holds the request. What changed, if anything,
		// is what the store committed: a write either happened or did not.
		s.log.Warn("api: the store did not answer in time", "method", r.Method, "path", r.URL.Path, "timeout", s.storeWait, "err", err)
		w.Header().Set("Retry-After", "5")
		e = &Error{http.StatusServiceUnavailable, CodeStoreUnavailable,
			fmt.Sprintf("the store did not answer within %s (the log says more); try again", s.storeWait)}
	case storeUnreachable(err):
		// The store refuses connections or dropped this one (down,
		// restarting, shutting down): the client's move is to try again
		// later, as after a timeout, not to report a bug.
		s.log.Warn("api: the store does not answer", "method", r.Method, "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "5")
		e = &Error{http.StatusServiceUnavailable, CodeStoreUnavailable, "the store does not answer (the log says why); try again"}
	default:
		s.log.Error("api: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		e = &Error{http.StatusInternalServerError, CodeInternal, "internal error (logged)"}
	}
	if e.Status == http.StatusMethodNotAllowed && w.Header().Get("Allow") == "" {
		w.Header().Set("Allow", "GET")
	}
	s.writeJSON(w, e.Status, envelope{Error: &errorBody{Code: e.Code, Message: e.Message}})
}

// storeUnreachable reports whether err says the store could not be
// reached: a connection that failed, one that broke before the request
// was sent, or a session the server ended (shutdown, restart,
// pg_terminate_backend).
func storeUnreachable(err error) bool {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || pgconn.SafeToRetry(err) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P01..57P03: admin or crash
		// shutdown, cannot connect now.
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	return false
}

// unix renders a time as unix seconds, or null when zero.
func unix(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	u := t.Unix()
	return &u
}
