package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// runAPI calls the admin API of a running walhook and decodes the envelope.
func runAPI(t *testing.T, method, url, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var env map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("%s %s: body %q is not JSON: %v", method, url, raw, err)
	}
	return resp.StatusCode, env
}

// An admin's day through a real `walhook run`: subscribe an endpoint through
// the API, see only the subscribed events arrive, read the delivery history
// and the status; bad input and a missing key change nothing.
func TestRunAdminAPI(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, string(runReadFile(t, "../../testdata/auction-excellence/schema.sql")))
	rc := newRunReceiver(t, runSecret, nil)
	file, cfg := runConfig(t, runReadFile(t, "../../testdata/auction-excellence/walhook.yaml"), db.settings())
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]

	if code, env := runAPI(t, "GET", base+"/api/v1/webhooks", "", ""); code != 401 || env["success"] != false {
		t.Fatalf("no key: %d %v, want 401", code, env)
	}
	code, env := runAPI(t, "POST", base+"/api/v1/webhooks/create", runAPIKey,
		`{"url":"`+rc.URL+`","events":["problem.nonsense"]}`)
	if errObj, _ := env["error"].(map[string]any); code != 400 || errObj["code"] != "unknown_event" {
		t.Fatalf("unknown event: %d %v, want 400 unknown_event", code, env)
	}
	if _, env := runAPI(t, "GET", base+"/api/v1/webhooks", runAPIKey, ""); env["data"].(map[string]any)["total"] != json.Number("0") {
		t.Fatalf("a refused create left an endpoint: %v", env)
	}

	code, env = runAPI(t, "POST", base+"/api/v1/webhooks/create", runAPIKey,
		`{"url":"`+rc.URL+`","events":["problem.*","member.role_changed"],"secret":"`+runSecret+`","description":"ops"}`)
	if code != 201 && code != 200 {
		t.Fatalf("create: %d %v", code, env)
	}
	id, _ := env["data"].(map[string]any)["subscriptionId"].(string)
	if !strings.HasPrefix(id, "whk_") {
		t.Fatalf("create: subscriptionId %q, want whk_…", id)
	}

	for _, sql := range runAEActivity {
		db.exec(t, sql)
	}
	want := map[string]int{"problem.created": 1, "problem.status_changed": 1, "problem.assigned": 1,
		"problem.action_completed": 1, "member.role_changed": 1}
	runWaitFor(t, 30*time.Second, "the subscribed events", func() bool { return rc.Unique() >= 5 }, p.diag)
	time.Sleep(500 * time.Millisecond) // anything unsubscribed would arrive by now
	if got := rc.Counts(); !runCountsEqual(got, want) {
		t.Errorf("delivered %v, want only the subscribed %v", got, want)
	}

	var hist []any
	runWaitFor(t, 60*time.Second, "five delivered rows in the history", func() bool {
		_, env := runAPI(t, "GET", base+"/api/v1/webhooks/"+id+"/deliveries?status=delivered", runAPIKey, "")
		data, _ := env["data"].(map[string]any)
		hist, _ = data["deliveries"].([]any)
		return len(hist) == 5
	}, p.diag)
	for _, h := range hist {
		d := h.(map[string]any)
		if d["status"] != "delivered" || d["responseStatusCode"] != json.Number("204") {
			t.Errorf("history row %v: want delivered with 204", d)
		}
	}

	code, env = runAPI(t, "GET", base+"/api/v1/status", runAPIKey, "")
	slot, _ := env["data"].(map[string]any)["slot"].(map[string]any)
	if code != 200 || slot["active"] != true || slot["walStatus"] == "" {
		t.Errorf("status: %d %v, want an active slot", code, env)
	}
	// Every walhook session says so in pg_stat_activity (the DSN sets no
	// application_name): the walsender, the leader lock, LISTEN, the pool.
	if n := db.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'walhook'
		AND backend_type IN ('client backend', 'walsender')`); n < 3 {
		t.Errorf("%d sessions named walhook, want the walsender, the lock and LISTEN sessions at least", n)
	}
	if code, env := runAPI(t, "DELETE", base+"/api/v1/webhooks/"+id, runAPIKey, ""); code != 200 || env["data"].(map[string]any)["deletedId"] != id {
		t.Errorf("delete: %d %v", code, env)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
}

// An endpoint subscribed through the API to a type the rules stop
// producing (the rule renamed): the API checked the filter when it was
// written, so only the next start can tell, and it logs the endpoint and
// the stale types rather than leaving it to receive nothing in silence.
func TestRunWarnsOfStaleSubscriptions(t *testing.T) {
	t.Parallel()
	db, file := itemsRun(t, nil)
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	code, env := runAPI(t, "POST", base+"/api/v1/webhooks/create", runAPIKey,
		`{"url":"https://hooks.example.com/in","events":["item.created","item.*"]}`)
	if code != 201 && code != 200 {
		t.Fatalf("create: %d %v", code, env)
	}
	id := env["data"].(map[string]any)["subscriptionId"].(string)
	if strings.Contains(p.stderr.String(), "no rule produces") {
		t.Fatal("warned while the rules produce the type")
	}
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}

	s := db.settings()
	renamed, _ := runConfig(t, []byte(strings.Replace(runItemsConfig, "item.created", "item.added", 1)), s)
	p = startRunProc(t, "--config", renamed)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	logs := p.stderr.String()
	if !strings.Contains(logs, "an endpoint subscribes to event types no rule produces") ||
		!strings.Contains(logs, "endpoint="+id+" events=[item.created]") {
		t.Errorf("no warning naming endpoint %s and item.created (item.* still matches):\n%s", id, runTail(logs, 3000))
	}
}

// A store that answers but takes no writes (a standby the store DSN
// reaches after a failover, default_transaction_read_only): walhook can
// store and record nothing, and /readyz says not ready until it can.
func TestRunReadyzWithAReadOnlyStore(t *testing.T) {
	t.Parallel()
	db, file := itemsRun(t, nil)
	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	if code, env := runAPI(t, "GET", base+"/readyz", "", ""); code != http.StatusOK {
		t.Fatalf("readyz: %d %v, want 200", code, env)
	}
	// walhook's store sessions reconnect to a read-only database.
	setReadOnly := func(on bool) {
		v := "RESET default_transaction_read_only"
		if on {
			v = "SET default_transaction_read_only = on"
		}
		var name string
		if err := db.pool.QueryRow(context.Background(), `SELECT current_database()`).Scan(&name); err != nil {
			t.Fatal(err)
		}
		// One simple-protocol exec, one session: a new session of the
		// test's pool is read-only too.
		db.exec(t, `BEGIN READ WRITE; ALTER DATABASE `+pgx.Identifier{name}.Sanitize()+` `+v+`; COMMIT`)
		db.exec(t, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'walhook' AND backend_type = 'client backend'`)
	}
	setReadOnly(true)
	// The first call may find a session the terminate ended; the ones
	// after it reach the read-only store, and the log says so.
	runWaitFor(t, 30*time.Second, "readyz to say not ready for read-only", func() bool {
		code, env := runAPI(t, "GET", base+"/readyz", "", "")
		if e, _ := env["error"].(map[string]any); code != http.StatusServiceUnavailable || e["code"] != "not_ready" {
			return false
		}
		return strings.Contains(p.stderr.String(), "the store is read-only")
	}, p.diag)
	setReadOnly(false)
	runWaitFor(t, 30*time.Second, "readyz to say ready again", func() bool {
		code, _ := runAPI(t, "GET", base+"/readyz", "", "")
		return code == http.StatusOK
	}, p.diag)
}
