package dispatch

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are registered on the injected Registerer only, never on the
// global default registry, so tests and several Dispatchers in one process
// do not collide.
type metrics struct {
	deliveries      *prometheus.CounterVec // endpoint, outcome
	attemptLatency  prometheus.Histogram
	deliveryLatency prometheus.Histogram // event occurred_at → 2xx
	pending         prometheus.Gauge
	oldestPending   prometheus.GaugeFunc // time.Since(oldestAt)
	// oldestAt is when the oldest unfinished delivery was created, by
	// this process's clock, as the last store read found it (unix
	// nanoseconds, 0: none): the age goes on growing while the store does
	// not answer, when nothing can be recorded delivered.
	oldestAt      atomic.Int64
	appendEvents  prometheus.Histogram
	appendLatency prometheus.Histogram
	started       *prometheus.CounterVec // via
	// labelled: the endpoint ids deliveries has series for, so that those
	// of deleted endpoints can be removed (forgetEndpoints): API-created
	// endpoints come and go, and their series would pile up on /metrics.
	labelled sync.Map
	// labelMu makes noting an id in labelled and making its series one
	// step to forgetEndpoint (read-locked by countOutcome, locked by
	// forgetEndpoint): between the two, a forget removed the note but not
	// the series made next, which then stayed for good.
	labelMu sync.RWMutex
	// byEndpoint: deliveries has the endpoint label (Options.NoEndpointMetrics).
	byEndpoint bool
}

// countOutcome counts one attempt outcome of an endpoint.
func (m *metrics) countOutcome(endpointID, outcome string) {
	if !m.byEndpoint {
		m.deliveries.WithLabelValues(outcome).Inc()
		return
	}
	m.labelMu.RLock()
	defer m.labelMu.RUnlock()
	m.labelled.LoadOrStore(endpointID, struct{}{})
	m.deliveries.WithLabelValues(endpointID, outcome).Inc()
}

// forgetEndpoint removes a deleted endpoint's series.
func (m *metrics) forgetEndpoint(endpointID string) {
	if !m.byEndpoint {
		return
	}
	m.labelMu.Lock()
	defer m.labelMu.Unlock()
	m.deliveries.DeletePartialMatch(prometheus.Labels{"endpoint": endpointID})
	m.labelled.Delete(endpointID)
}

// forgetDeletedEndpoints removes the series of endpoints that no longer
// exist in the store, deleted by this process or another (the maintenance
// loop runs it every minute).
func (d *Dispatcher) forgetDeletedEndpoints(ctx context.Context) error {
	var ids []string
	d.metrics.labelled.Range(func(k, _ any) bool { ids = append(ids, k.(string)); return true })
	if len(ids) == 0 {
		return nil
	}
	rows, err := d.pool.Query(ctx, d.q(`SELECT id FROM {{schema}}.endpoints WHERE id = ANY($1::text[])`), ids)
	if err != nil {
		return err
	}
	exists := map[string]bool{}
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { exists[id] = true; return nil }); err != nil {
		return err
	}
	for _, id := range ids {
		if !exists[id] {
			d.metrics.forgetEndpoint(id)
		}
	}
	return nil
}

// Delivery outcomes, the "outcome" label of walhook_delivery_attempts_total.
const (
	outcomeDelivered = "delivered"
	outcomeRetry     = "retry"
	outcomeFailed    = "failed"
)

func newMetrics(reg prometheus.Registerer, byEndpoint bool) (*metrics, error) {
	labels := []string{"endpoint", "outcome"}
	if !byEndpoint {
		labels = labels[1:]
	}
	m := &metrics{
		byEndpoint: byEndpoint,
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walhook_delivery_attempts_total",
			Help: "Delivery attempts by endpoint (unless delivery.endpoint_metrics is false) and outcome (delivered, retry = will be retried, failed = retries exhausted or refused).",
		}, labels),
		attemptLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "walhook_attempt_duration_seconds",
			Help:    "Duration of one HTTP delivery attempt.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		deliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "walhook_commit_to_delivery_seconds",
			Help:    "Time from the source transaction's commit to the receiver's 2xx.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 20),
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walhook_outbox_pending",
			Help: "Deliveries waiting to be attempted (pending or being attempted).",
		}),
		appendEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "walhook_append_events",
			Help:    "Events made durable by one outbox append.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		appendLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "walhook_append_duration_seconds",
			Help:    "Duration of one outbox append (one store transaction).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walhook_deliveries_started_total",
			Help: "Deliveries this process started, by how it took them: handed over by the append that stored them (via=append) or claimed from the store (via=claim: retries, backlog, other processes' events).",
		}, []string{"via"}),
	}
	m.oldestPending = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "walhook_outbox_oldest_pending_seconds",
		Help: "Age of the oldest delivery not yet finished (it goes on ageing from the last store read while the store does not answer).",
	}, func() float64 {
		if ns := m.oldestAt.Load(); ns != 0 {
			return time.Since(time.Unix(0, ns)).Seconds()
		}
		return 0
	})
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.attemptLatency, m.deliveryLatency,
		m.pending, m.oldestPending, m.appendEvents, m.appendLatency, m.started} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
