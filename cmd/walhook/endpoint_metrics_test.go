package main

import (
	"log/slog"
	"testing"

	"github.com/walhook/walhook/config"
)

// delivery.endpoint_metrics reaches the dispatcher: false leaves the
// endpoint label of walhook_delivery_attempts_total out.
func TestEndpointMetricsOption(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{true, false} {
		cfg := &config.Config{Delivery: config.Delivery{EndpointMetrics: on}}
		if got := dispatchOptions(cfg, slog.New(slog.DiscardHandler), nil).NoEndpointMetrics; got != !on {
			t.Errorf("endpoint_metrics %v: NoEndpointMetrics %v", on, got)
		}
	}
}
