package dispatch

import (
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// An attempt of an endpoint that finishes while the endpoint is deleted
// must not leave a series that no pass will remove: whenever
// walhook_delivery_attempts_total has a series of an endpoint, labelled
// names it, so forgetDeletedEndpoints finds it. countOutcome noted the id
// and then made the series; a forgetEndpoint in between removed the note
// but not the series made after it, which then stayed on /metrics for good.
func TestCountOutcomeRacingForgetKeepsSeriesFindable(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, true)
	if err != nil {
		t.Fatal(err)
	}
	series := func() bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "walhook_delivery_attempts_total" && len(mf.GetMetric()) > 0 {
				return true
			}
		}
		return false
	}
	const id = "whk_0123456789abcdef"
	for i := 0; i < 20000; i++ {
		m.countOutcome(id, outcomeDelivered)
		var wg sync.WaitGroup
		wg.Go(func() { m.countOutcome(id, outcomeDelivered) })
		wg.Go(func() { m.forgetEndpoint(id) })
		wg.Wait()
		if _, ok := m.labelled.Load(id); !ok && series() {
			t.Fatalf("round %d: a series of %s is left that labelled does not name: no pass would remove it", i, id)
		}
		m.forgetEndpoint(id)
	}
}
