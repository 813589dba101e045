package api

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/walhook/walhook/dispatch"
)

type eventsResponse struct {
	Events []CatalogEntry `json:"events"`
}

func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	out := eventsResponse{Events: s.catalog}
	if out.Events == nil {
		out.Events = []CatalogEntry{}
	}
	s.ok(w, http.StatusOK, out)
}

type slotView struct {
	ReplicationStatus
	Error string `json:"error,omitempty"`
}

type outboxView struct {
	Pending                 int     `json:"pending"`
	Delivering              int     `json:"delivering"`
	Failing                 int     `json:"failing"`
	Failed                  int     `json:"failed"`
	Skipped                 int     `json:"skipped"`
	OldestPendingAgeSeconds float64 `json:"oldestPendingAgeSeconds"`
	DeliveriesPerSecond     float64 `json:"deliveriesPerSecond"`
}

type endpointStateView struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
	Since  *int64 `json:"since"`
}

type endpointsView struct {
	Healthy  int                 `json:"healthy"`
	Failing  []endpointStateView `json:"failing"`
	Disabled []endpointStateView `json:"disabled"`
}

type statusResponse struct {
	Slot      *slotView      `json:"slot"`
	Outbox    *outboxView    `json:"outbox"`
	Endpoints *endpointsView `json:"endpoints"`
	// StoreError is set, and outbox and endpoints are null, while the
	// store does not answer: the slot part is still worth seeing then.
	StoreError string `json:"storeError,omitempty"`
}

// statusTimeout bounds each status probe, so a stalled source database
// cannot hang the status page.
const statusTimeout = 5 * time.Second

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
	defer cancel()
	var out statusResponse
	if s.replication != nil {
		// A slot error is part of the status, not a failure of the request:
		// the page is most needed when replication is in trouble.
		st, err := s.replication.Status(ctx)
		out.Slot = &slotView{ReplicationStatus: st}
		if err != nil {
			out.Slot.Error = err.Error()
		}
	}
	ob, err := s.admin.OutboxStatus(ctx)
	if err != nil {
		// The slot (retained WAL, lag) matters most exactly while the
		// store is down: answer with it. The cause names hosts: logged.
		s.log.Warn("status: the store does not answer", slog.Any("error", err))
		out.StoreError = "the store does not answer (the log says why)"
		s.ok(w, http.StatusOK, out)
		return
	}
	out.Outbox = &outboxView{
		Pending: ob.Pending, Delivering: ob.Delivering, Failing: ob.Failing, Failed: ob.Failed, Skipped: ob.Skipped,
		OldestPendingAgeSeconds: ob.OldestPendingAge.Seconds(),
		DeliveriesPerSecond:     float64(ob.DeliveredLastMinute) / 60,
	}
	out.Endpoints = &endpointsView{Healthy: ob.Endpoints.Healthy,
		Failing: stateViews(ob.Endpoints.Failing), Disabled: stateViews(ob.Endpoints.Disabled)}
	s.ok(w, http.StatusOK, out)
}

func stateViews(in []dispatch.EndpointState) []endpointStateView {
	out := make([]endpointStateView, 0, len(in))
	for _, e := range in {
		out = append(out, endpointStateView{ID: e.ID, Reason: e.Reason, Since: unix(e.Since)})
	}
	return out
}

type healthResponse struct {
	Status string `json:"status"`
}

// healthz answers 200 while the process serves HTTP: liveness only, so an
// orchestrator does not restart walhook because PostgreSQL is down.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	s.ok(w, http.StatusOK, healthResponse{Status: "ok"})
}

// readyz runs the Ready check (store reachable, replication started, …).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
		defer cancel()
		if err := s.ready(ctx); err != nil {
			// The cause names hosts, users and databases: logged, not
			// shown to whoever asks (/readyz needs no key).
			s.log.Warn("not ready", slog.Any("error", err))
			s.fail(w, r, errorf(http.StatusServiceUnavailable, CodeNotReady, "not ready: the store does not answer (the log says why)"))
			return
		}
	}
	s.ok(w, http.StatusOK, healthResponse{Status: "ready"})
}
