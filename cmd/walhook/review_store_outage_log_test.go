package main

import (
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// reviewTwoClusterRun starts walhook run with the source and the store in
// clusters of their own (so either can be stopped), at log level info,
// and waits until it has delivered a first batch. It returns the run,
// its API base URL, the source database and both clusters.
func reviewTwoClusterRun(t *testing.T, slot string) (p *runProc, base string, db *runDB, src, store *pgtest.Cluster, rc *runReceiver) {
	t.Helper()
	src, store = pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	db = &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: slot}
	if _, err := db.pool.Exec(t.Context(), runItemsSchema); err != nil {
		t.Fatal(err)
	}
	rc = newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["store.dsn"] = strings.Replace(store.DSN("postgres"), "postgres@", "postgres:"+runDSNPassword+"@", 1)
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	s["log.level"] = "info"
	// the defaults' proportions: maintenance every 10 s
	s["delivery.timeout"] = "10s"
	s["delivery.lease"] = "40s"
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	migrateStore(t, store)
	p = startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base = apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	insertItems(t, db, 1, 10)
	runWaitFor(t, 30*time.Second, "the first 10 deliveries", func() bool { return rc.Unique() == 10 }, p.diag)
	return p, base, db, src, store, rc
}

// logMessages counts log lines by level and message.
func logMessages(s string) map[string]int {
	h := map[string]int{}
	for _, m := range regexp.MustCompile(`level=(\w+) msg="([^"]*)"`).FindAllStringSubmatch(s, -1) {
		h[m[1]+" "+m[2]]++
	}
	return h
}

// Review: while the store is unreachable, every walhook process logs
// "leader lock: connect to the store" at warn once a second, with no
// backoff and no "still failing" summary (cmd/walhook/run_replicate.go
// acquireLeader: a Warn on every leaderPoll iteration), and beside it
// "claim failed, retrying" every 5 s, "listen connection lost" every
// 10 s and four maintenance warnings every tick. A 30 s outage logs
// 66 warnings; an hour's is ~8,000 per process, 3,600 of them the same
// line; the stream's own reconnects show how it should look (backoff,
// "waiting …" said once). One line when the store goes away, a
// reminder now and then, one when it is back.
func TestReviewStoreOutageLogsEverySecond(t *testing.T) {
	t.Parallel()
	p, _, db, _, store, rc := reviewTwoClusterRun(t, "wh_outage_log")
	mark := len(p.stderr.String())
	if err := store.Stop(); err != nil {
		t.Fatal(err)
	}
	const outage = 30 * time.Second
	time.Sleep(outage)
	during := p.stderr.String()[mark:]
	if err := store.StartAgain(); err != nil {
		t.Fatal(err)
	}
	insertItems(t, db, 11, 20)
	runWaitFor(t, 90*time.Second, "deliveries after the store is back", func() bool { return rc.Unique() == 20 }, p.diag)

	h := logMessages(during)
	var keys []string
	total := 0
	for k, n := range h {
		keys = append(keys, k)
		total += n
	}
	sort.Slice(keys, func(i, j int) bool { return h[keys[i]] > h[keys[j]] })
	var report strings.Builder
	var repeated []string
	for _, k := range keys {
		report.WriteString("\n  " + k + ": " + itoaReview(h[k]))
		if h[k] > 10 {
			repeated = append(repeated, k)
		}
	}
	t.Logf("log lines during a %s store outage: %d%s", outage, total, report.String())
	if len(repeated) > 0 {
		t.Errorf("during a %s store outage the same warning was logged more than 10 times (%s): %d lines in all, "+
			"an hour's outage ~%d per process", outage, strings.Join(repeated, "; "), total, total*int(time.Hour/outage))
	}
}

func itoaReview(n int) string {
	const digits = "0123456789"
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{digits[n%10]}, b...)
	}
	return string(b)
}
