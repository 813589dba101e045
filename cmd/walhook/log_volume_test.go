package main

import (
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// logMessages counts log lines by level and message.
func logMessages(s string) map[string]int {
	h := map[string]int{}
	for _, m := range regexp.MustCompile(`level=(\w+) msg="([^"]*)"`).FindAllStringSubmatch(s, -1) {
		h[m[1]+" "+m[2]]++
	}
	return h
}

// repeatedLines lists the messages logged more than max times, with a
// report of all of them by count.
func repeatedLines(h map[string]int, max int) (repeated []string, report string) {
	var keys []string
	for k := range h {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return h[keys[i]] > h[keys[j]] })
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %s: %d", k, h[k])
		if h[k] > max {
			repeated = append(repeated, k)
		}
	}
	return repeated, b.String()
}

// A dead endpoint (connection refused): every attempt of every delivery
// fails, for up to a day before the disable rule stops it. At info level
// that is one line when the failures begin and one when deliveries fail
// for good, then at most one of each a minute, not one per attempt (400
// lines for these 100 deliveries of 4 attempts; the attempts are at debug
// and in the delivery log).
func TestRunDeadEndpointLogVolume(t *testing.T) {
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
	var lines []string
	for _, l := range strings.Split(p.stderr.String(), "\n") {
		if strings.Contains(l, "static:dead") {
			lines = append(lines, l)
		}
	}
	h := logMessages(strings.Join(lines, "\n"))
	if repeated, report := repeatedLines(h, 2); len(repeated) > 0 || len(h) == 0 {
		t.Errorf("log lines about the dead endpoint at info and above, for %d deliveries:%s", n, report)
	}
	if !strings.Contains(strings.Join(lines, "\n"), `msg="delivery attempts to an endpoint fail; retrying on the schedule" part=dispatch endpoint=static:dead`) {
		t.Error("the failures were not logged at all")
	}
}

// While the store is unreachable, each problem is logged once (then once
// a minute), and the store's return once: it logged "leader lock: connect
// to the store" every second, "claim failed" every 5 s and four
// maintenance warnings every pass, 66 lines for these 30 s.
func TestRunStoreOutageLogVolume(t *testing.T) {
	t.Parallel()
	src, store := pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_outage_log"}
	if _, err := db.pool.Exec(t.Context(), runItemsSchema); err != nil {
		t.Fatal(err)
	}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["store.dsn"] = strings.Replace(store.DSN("postgres"), "postgres@", "postgres:"+runDSNPassword+"@", 1)
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	s["log.level"] = "info"
	s["delivery.timeout"] = "10s" // the defaults' proportions: maintenance every 10 s
	s["delivery.lease"] = "40s"
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	migrateStore(t, store)
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 10)
	runWaitFor(t, 30*time.Second, "the first 10 deliveries", func() bool { return rc.Unique() == 10 }, p.diag)

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
	if repeated, report := repeatedLines(logMessages(during), 2); len(repeated) > 0 {
		t.Errorf("during a %s store outage, lines logged more than twice (%s):%s", outage, strings.Join(repeated, "; "), report)
	}
	if !strings.Contains(p.stderr.String()[mark:], `msg="leader lock: the store answers again"`) {
		t.Error("the store's return was not logged")
	}
}
