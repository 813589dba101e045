package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
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

// slotView is ReplicationStatus with the slot row's values as pointers:
// they are null, not zeros, when the row could not be read (see
// slotView's constructor), since a zero lag or retained WAL reads as a
// healthy, caught-up slot exactly while the source is unreachable.
type slotView struct {
	Slot          string   `json:"slot"`
	Active        *bool    `json:"active"`
	WALStatus     *string  `json:"walStatus"`
	ConfirmedLSN  *string  `json:"confirmedLsn"`
	RetainedBytes *int64   `json:"retainedBytes"`
	LagBytes      *int64   `json:"lagBytes"`
	LagSeconds    *float64 `json:"lagSeconds"`
	State         string   `json:"state"`
	LastError     string   `json:"lastError,omitempty"`
	Warnings      []string `json:"warnings,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// newSlotView shows st. After an error the row counts as read only when
// it carries a wal_status, which PostgreSQL reports for every slot with WAL
// reserved, lost ones included (a lost slot is an error with its row
// read); without one the numbers are the zero values of a failed probe.
func newSlotView(st ReplicationStatus, err error) *slotView {
	v := &slotView{Slot: st.Slot, State: st.State, LastError: st.LastError, Warnings: st.Warnings}
	if err != nil {
		v.Error = err.Error()
		if st.WALStatus == "" {
			return v
		}
	}
	v.Active, v.WALStatus, v.ConfirmedLSN = &st.Active, &st.WALStatus, &st.ConfirmedLSN
	v.RetainedBytes, v.LagBytes, v.LagSeconds = &st.RetainedBytes, &st.LagBytes, &st.LagSeconds
	if st.LagSecondsUnknown {
		v.LagSeconds = nil
	}
	return v
}

type outboxView struct {
	Pending                 int     `json:"pending"`
	Delivering              int     `json:"delivering"`
	AwaitingRescue          int     `json:"awaitingRescue"`
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
	// It is also set, with outbox null, while the first count of a
	// backlog of tens of millions goes on past the request.
	StoreError string `json:"storeError,omitempty"`
}

// statusTimeout bounds each status probe, so a stalled source database
// cannot hang the status page.
const statusTimeout = 5 * time.Second

// status probes the slot and the store at the same time, each with its own
// statusTimeout: the slot probe queries the source on a connection of its
// own, and a source that drops packets must not use up the store's time
// (the page would then report a healthy store as down, during the
// source's incident).
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	var out statusResponse
	var wg sync.WaitGroup
	if s.replication != nil {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
			defer cancel()
			// A slot error is part of the status, not a failure of the
			// request: the page is most needed when replication is in
			// trouble.
			out.Slot = newSlotView(s.replication.Status(ctx))
		})
	}
	ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
	defer cancel()
	ob, err := s.admin.OutboxStatus(ctx)
	wg.Wait()
	if errors.Is(err, dispatch.ErrStillCounting) {
		// Tens of millions pending, and no counts yet: the count goes
		// on, the next request has it.
		out.StoreError = "counting the outbox takes longer than 5 s (a backlog of tens of millions); the count goes on: ask again shortly"
		out.Endpoints = endpointsOf(ob.Endpoints)
		s.ok(w, http.StatusOK, out)
		return
	}
	if err != nil {
		// The slot (retained WAL, lag) matters most exactly while the
		// store is down: answer with it. The cause names hosts: logged.
		s.log.Warn("status: the store does not answer", slog.Any("error", err))
		out.StoreError = "the store does not answer (the log says why)"
		s.ok(w, http.StatusOK, out)
		return
	}
	out.Outbox = &outboxView{
		Pending: ob.Pending, Delivering: ob.Delivering, AwaitingRescue: ob.AwaitingRescue,
		Failing: ob.Failing, Failed: ob.Failed, Skipped: ob.Skipped,
		OldestPendingAgeSeconds: ob.OldestPendingAge.Seconds(),
		DeliveriesPerSecond:     float64(ob.DeliveredLastMinute) / 60,
	}
	out.Endpoints = endpointsOf(ob.Endpoints)
	s.ok(w, http.StatusOK, out)
}

func endpointsOf(h dispatch.EndpointHealth) *endpointsView {
	return &endpointsView{Healthy: h.Healthy, Failing: stateViews(h.Failing), Disabled: stateViews(h.Disabled)}
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

// notReadyKey is /readyz's problem in Server.notReady.
const notReadyKey = "not ready"

// causeKey is an error's text with every run of digits as one '#': a
// cause that differs between probes only in its numbers (the local port
// of a reset connection, a measured delay) is the same cause.
func causeKey(err error) string {
	var b strings.Builder
	digits := false
	for _, c := range err.Error() {
		if c >= '0' && c <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteRune(c)
	}
	return b.String()
}

// readyz runs the Ready check (store reachable, replication started, …).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
		defer cancel()
		if err := s.ready(ctx); err != nil {
			// The cause names hosts, users and databases: logged, not
			// shown to whoever asks (/readyz needs no key). Probes ask
			// every few seconds: an outage is logged when it begins or
			// its cause changes (the store reached again, but
			// read-only), then once a minute.
			ok, held := s.notReady.Allow(notReadyKey)
			s.notReadyMu.Lock()
			if why := causeKey(err); ok || why != s.notReadyWhy {
				s.notReadyWhy = why
				s.log.Warn("not ready", slog.Any("error", err), slog.Int("more_since_last_line", held))
			}
			s.notReadyMu.Unlock()
			s.fail(w, r, errorf(http.StatusServiceUnavailable, CodeNotReady, "not ready: the store does not answer or is read-only (the log says why)"))
			return
		}
		if s.notReady.Clear(notReadyKey) {
			s.notReadyMu.Lock()
			s.notReadyWhy = ""
			s.notReadyMu.Unlock()
			s.log.Info("ready again")
		}
	}
	s.ok(w, http.StatusOK, healthResponse{Status: "ready"})
}
