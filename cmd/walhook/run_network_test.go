package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/faultproxy"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/receiver"
)

// Network faults between a running walhook and its source, its store (a
// cluster of its own) and its receiver, injected by a TCP proxy in front
// of each (internal/faultproxy): resets, links that drop every packet for
// a while, connections a NAT forgot (blackholed for good while new ones
// go through), responses lost after the request arrived.

// netRig is the items source and a store on clusters of their own, and a
// verifying receiver, each reached by walhook through a fault proxy.
type netRig struct {
	db               *runDB
	src, store       *pgtest.Cluster
	rc               *runReceiver
	srcP, storeP, rP *faultproxy.Proxy
	file             string
}

// startProxy starts a fault proxy in front of addr, closed at the test's end.
func startProxy(t *testing.T, addr string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// viaProxy is dsn (a pgtest TCP DSN) with its port replaced by p's, and a
// password walhook must not log.
func viaProxy(t *testing.T, c *pgtest.Cluster, p *faultproxy.Proxy) string {
	t.Helper()
	dsn := c.DSN("postgres")
	from := fmt.Sprintf("127.0.0.1:%d/", c.Port)
	if !strings.Contains(dsn, from) {
		t.Fatalf("DSN %q is not on 127.0.0.1:%d", dsn, c.Port)
	}
	dsn = strings.Replace(dsn, from, fmt.Sprintf("127.0.0.1:%d/", p.Port()), 1)
	return strings.Replace(dsn, "postgres@", "postgres:"+runDSNPassword+"@", 1)
}

// newNetRig prepares the rig for slot with settings on top of the run
// tests' defaults; status, when set, answers the receiver's requests.
func newNetRig(t *testing.T, slot string, status func(receiver.Delivery) int, settings map[string]any) *netRig {
	t.Helper()
	r := &netRig{src: pgtest.StartT(t, pgtest.Options{}), store: pgtest.StartT(t, pgtest.Options{})}
	r.db = &runDB{dsn: r.src.DSN("postgres"), pool: testPool(t, r.src.DSN("postgres")), schema: "walhook", slot: slot}
	if _, err := r.db.pool.Exec(context.Background(), runItemsSchema); err != nil {
		t.Fatalf("load schema: %v", err)
	}
	r.rc = newRunReceiver(t, runSecret, status)
	r.srcP = startProxy(t, fmt.Sprintf("127.0.0.1:%d", r.src.Port))
	r.storeP = startProxy(t, fmt.Sprintf("127.0.0.1:%d", r.store.Port))
	u, err := url.Parse(r.rc.URL)
	if err != nil {
		t.Fatal(err)
	}
	r.rP = startProxy(t, u.Host)
	s := r.db.settings()
	s["source.dsn"] = viaProxy(t, r.src, r.srcP)
	s["store.dsn"] = viaProxy(t, r.store, r.storeP)
	s["endpoints"] = []map[string]any{runEndpoint("r", fmt.Sprintf("http://127.0.0.1:%d/hooks", r.rP.Port()), runSecret)}
	for k, v := range settings {
		s[k] = v
	}
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	r.file = file
	r.db.setup(t, cfg)
	migrateStore(t, r.store)
	return r
}

// failFirst answers 500 to the first request of each delivery, then 204:
// every delivery needs a retry, which only a claim sends.
func failFirst() func(receiver.Delivery) int {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(d receiver.Delivery) int {
		mu.Lock()
		defer mu.Unlock()
		if !seen[d.ID] {
			seen[d.ID] = true
			return 500
		}
		return 204
	}
}

// The store's connections are blackholed for good (a NAT or load balancer
// that forgot them) while walhook has retries to send: new connections go
// through. Every delivery still gets its retry, which only a claim sends,
// within the bounds walhook's store calls have; before, the claim in
// flight (and the lease rescue) waited on its dead connection for as long
// as TCP takes, forever behind a middlebox that keeps the socket open, and
// no retry was sent again.
func TestRunStoreBlackholedWhileClaiming(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netclaim", failFirst(), map[string]any{"delivery.retry_schedule": []string{"0s", "3s"}})
	spool := testPool(t, r.store.DSN("postgres"))
	p := startRunProc(t, "--config", r.file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	insertItems(t, r.db, 1, 40)
	runWaitFor(t, 30*time.Second, "40 first attempts failed and recorded", func() bool {
		var n int
		err := spool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries WHERE status = 'pending' AND attempts = 1`).Scan(&n)
		return err == nil && n == 40
	}, alive)
	n := r.storeP.Blackhole()
	t.Logf("blackholed %d store connections", n)
	runWaitFor(t, 45*time.Second, "40 retries after the store's connections were blackholed",
		func() bool { return r.rc.Unique() == 40 && r.rc.Duplicates() >= 40 }, alive)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if strings.Contains(p.stderr.String(), runDSNPassword) {
		t.Error("the log holds the DSN's password")
	}
	t.Logf("walhook run warnings:\n%s", runTail(warnLines(p.stderr.String()), 3000))
}

// The store's connections are blackholed for good while walhook leads:
// its lock session stops answering, the term ends, and walhook leads
// again within seconds, ending its own lost session (which holds the lock
// on the server until idle_session_timeout, a minute, behind a middlebox
// that answers TCP keepalives; no process could lead until then). Every
// change written meanwhile is delivered.
func TestRunLeadsAgainAfterItsLockSessionIsBlackholed(t *testing.T) {
	t.Parallel()
	r := newNetRig(t, "wh_netlock", nil, nil)
	p := startRunProc(t, "--config", r.file)
	alive := func() string {
		if err, ok := p.exited(); ok {
			t.Fatalf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
		}
		return p.diag()
	}
	insertItems(t, r.db, 1, 10)
	runWaitFor(t, 30*time.Second, "10 deliveries", func() bool { return r.rc.Unique() == 10 }, alive)
	r.storeP.Blackhole()
	blackholed := time.Now()
	insertItems(t, r.db, 11, 30)
	// The lock's check notices within leaderPoll + leaderQueryTimeout;
	// a term's start and the first Append then take a fresh connection
	// each (the pool's ping bounds a dead idle one). Well inside
	// idle_session_timeout.
	runWaitFor(t, 40*time.Second, "30 deliveries after the store's connections were blackholed", func() bool { return r.rc.Unique() == 30 }, alive)
	t.Logf("delivered the changes written after the blackhole %s after it", time.Since(blackholed).Round(time.Second))
	if !strings.Contains(p.stderr.String(), "ended this process's lock session that stopped answering") {
		t.Errorf("the log does not say walhook ended its lost lock session:\n%s", runTail(warnLines(p.stderr.String()), 3000))
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if r.db.rcLeaked(t, p) {
		t.Error("the log holds the DSN's password")
	}
}

// rcLeaked reports whether p's log holds the DSN's password.
func (d *runDB) rcLeaked(t *testing.T, p *runProc) bool {
	t.Helper()
	return strings.Contains(p.stderr.String()+p.stdout.String(), runDSNPassword)
}
