package main

import (
	"context"
	"testing"
	"time"
)

// An idle walhook keeps the connections its periodic work needs (the
// publication watch every 10 s, status reads for /metrics and the API):
// it opened a new session for each, a fork, a login and, with
// log_connections on, server log lines — some 8,600 a day idle.
func TestRunIdleKeepsItsConnections(t *testing.T) {
	t.Parallel()
	db, file := itemsRun(t, map[string]any{"log.level": "info"})
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	runWaitFor(t, 30*time.Second, "replication", func() bool {
		return db.count(t, `SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walhook'`) > 0
	}, p.diag)
	// Warm up: the pools open their connections as they are first needed
	// (the leader's first rule-table check 10 s in, the first scrape and
	// status read) and keep them; what is measured below is what an idle
	// walhook opens after that, with room for one reconnect.
	runMetrics(t, base)
	runAPI(t, "GET", base+"/api/v1/status", runAPIKey, "")
	time.Sleep(12 * time.Second)

	datname := db.pool.Config().ConnConfig.Database
	sessions := func() int64 {
		var n int64
		ctx := context.Background()
		_, _ = db.pool.Exec(ctx, `SELECT pg_stat_clear_snapshot()`)
		if err := db.pool.QueryRow(ctx, `SELECT sessions FROM pg_stat_database WHERE datname = $1`, datname).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := sessions()
	const idle = 25 * time.Second // two publication checks
	time.Sleep(idle)
	idleNew := sessions() - before

	before = sessions()
	for i := 0; i < 4; i++ {
		runMetrics(t, base)
		runAPI(t, "GET", base+"/api/v1/status", runAPIKey, "")
	}
	time.Sleep(time.Second)
	scrapeNew := sessions() - before
	t.Logf("new sessions on the source: %d in %s idle (%.1f/min); %d for 4 /metrics scrapes and 4 status reads",
		idleNew, idle, float64(idleNew)/idle.Minutes(), scrapeNew)
	if idleNew > 1 {
		t.Errorf("an idle walhook opened %d new connections to the source in %s (%.1f per minute, %.0f per day): "+
			"it reconnects for its periodic checks instead of keeping a connection", idleNew, idle,
			float64(idleNew)/idle.Minutes(), float64(idleNew)/idle.Minutes()*60*24)
	}
	if scrapeNew > 1 {
		t.Errorf("4 /metrics scrapes and 4 /api/v1/status reads opened %d new connections to the source: one per scrape", scrapeNew)
	}
}
