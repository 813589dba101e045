package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// Review: a dead endpoint (connection refused) costs one log line per
// delivery attempt at info level: "delivery attempt failed, will retry"
// for each retry and "delivery failed for good" (warn) for each
// exhausted delivery, all saying the same thing about the same endpoint,
// with no aggregation or rate limit (dispatch/deliver.go deliverVia). An
// endpoint that is down for the 24 h before the disable rule trips, at a
// modest 5 events/s and the default six attempts, writes ~2.6 million
// near-identical lines; the receiver answering 500 to everything is the
// same. The operator needs to know the endpoint is failing and why
// (status, metrics, a periodic summary line), not one line per attempt.
func TestReviewDeadEndpointLogVolume(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/hooks"
	ln.Close() // connection refused from now on
	db, file := itemsRun(t, map[string]any{
		"log.level": "info",
		"endpoints": []map[string]any{runEndpoint("dead", dead, runSecret)},
	})
	p := startRunProc(t, "--config", file)
	const n = 100
	insertItems(t, db, 1, n)
	runWaitFor(t, 60*time.Second, "every delivery failed for good", func() bool {
		return db.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'failed'`) == n
	}, p.diag)
	time.Sleep(500 * time.Millisecond)
	var lines []string
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(l, "static:dead") {
			lines = append(lines, l)
		}
	}
	t.Logf("%d info+ log lines about the dead endpoint for %d deliveries (4 attempts each); first two:\n%s",
		len(lines), n, strings.Join(lines[:min(2, len(lines))], "\n"))
	if len(lines) > 20 {
		t.Errorf("%d log lines at info level for one endpoint that refuses connections (%d deliveries): one per attempt, "+
			"not rate-limited or summarised", len(lines), n)
	}
}
