package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/receiver"
	"github.com/walhook/walhook/internal/syncbuf"
)

// Shared helpers of the `walhook run` tests: a prepared source database
// (schema, publication, slot, store), a config file pointing at it, a
// verifying receiver, and walhook run in-process or as a subprocess.

// runDSNPassword is put into the source DSN (trust authentication ignores
// it) so tests can check that it never reaches a log or an error.
const runDSNPassword = "pw-must-not-be-logged"

const (
	runSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	runSecret2 = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
	runAPIKey  = "test-api-key-0123456789"
)

// runDB is a source database prepared for walhook run.
type runDB struct {
	dsn    string
	pool   *pgxpool.Pool
	schema string // store schema
	slot   string
}

// newRunDB creates a database, loads schemaSQL, and prepares the
// publication, the slot and the store for the rules of cfgFile (as
// `walhook setup` does).
func newRunDB(t *testing.T, schemaSQL string) *runDB {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, schemaSQL); err != nil {
		t.Fatalf("load schema: %v", err)
	}
	// Slots are cluster-wide: one per test database.
	return &runDB{dsn: dsn, pool: pool, schema: "walhook", slot: "wh_" + pool.Config().ConnConfig.Database}
}

// setup creates publication, slot and store for the tables of cfg.
func (d *runDB) setup(t *testing.T, cfg *config.Config) {
	t.Helper()
	ctx := context.Background()
	var tables []string
	for _, r := range cfg.Events {
		tables = append(tables, r.Table)
	}
	if _, err := cdc.Setup(ctx, d.dsn, cdc.SetupOptions{Slot: d.slot, Publication: cfg.Source.Publication, Tables: tables}); err != nil {
		t.Fatalf("cdc setup: %v", err)
	}
	if _, err := dispatch.Migrate(ctx, d.pool, d.schema); err != nil {
		t.Fatalf("migrate: %v", err)
	}
}

func (d *runDB) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := d.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", runFirstLine(sql), err)
	}
}

func runFirstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i > 0 {
		return s[:i] + " …"
	}
	return s
}

// slotLSN is the slot's confirmed_flush_lsn once no walsender holds the
// slot. Callers read it with no walhook running; after a stop the
// walsender may still be busy decoding (the shared cluster's WAL of other
// tests) with walhook's last status update unread in its socket, and it
// applies that update before it exits, so the value is read only then.
func (d *runDB) slotLSN(t *testing.T) cdc.LSN {
	t.Helper()
	var s string
	var active bool
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := d.pool.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1`, d.slot).Scan(&s, &active); err != nil {
			t.Fatal(err)
		}
		if !active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot %s still held by a walsender 30s after walhook stopped", d.slot)
		}
		time.Sleep(20 * time.Millisecond)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// cursor is the store's cursor for the slot (0 when none).
func (d *runDB) cursor(t *testing.T) cdc.LSN {
	t.Helper()
	var s string
	err := d.pool.QueryRow(context.Background(), `SELECT lsn::text FROM walhook.cursor WHERE slot = $1`, d.slot).Scan(&s)
	if err == pgx.ErrNoRows {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func (d *runDB) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := d.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// runConfig writes a config derived from the YAML file base (a seed's
// walhook.yaml or a test's own) with settings replaced, and loads it.
// Each setting is a dotted path and a value.
func runConfig(t *testing.T, base []byte, settings map[string]any) (string, *config.Config) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(base, &doc); err != nil || len(doc.Content) != 1 {
		t.Fatalf("config base: %v", err)
	}
	for path, v := range settings {
		var n yaml.Node
		if err := n.Encode(v); err != nil {
			t.Fatal(err)
		}
		if err := yamlSet(doc.Content[0], strings.Split(path, "."), &n); err != nil {
			t.Fatalf("config %s: %v", path, err)
		}
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(file, out, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file, os.LookupEnv)
	if err != nil {
		t.Fatalf("test config does not load: %v\n%s", err, out)
	}
	return file, cfg
}

// settings are the settings every run test uses: the database, quick
// retries, loopback receivers allowed, the API on a free port.
func (d *runDB) settings() map[string]any {
	return map[string]any{
		"source.dsn":                          strings.Replace(d.dsn, "postgres@", "postgres:"+runDSNPassword+"@", 1),
		"source.slot":                         d.slot,
		"source.heartbeat_interval":           "500ms",
		"source.status_interval":              "1s",
		"delivery.allow":                      []string{"127.0.0.1"},
		"delivery.retry_schedule":             []string{"0s", "20ms", "50ms", "100ms"},
		"delivery.jitter":                     0,
		"delivery.poll_interval":              "100ms",
		"delivery.timeout":                    "2s",
		"delivery.lease":                      "3s",
		"delivery.disable.never":              true,
		"api.listen":                          "127.0.0.1:0",
		"api.keys":                            []string{runAPIKey},
		"log.level":                           "debug",
		"delivery.max_in_flight_per_endpoint": 16,
	}
}

func runEndpoint(id, url, secret string, events ...string) map[string]any {
	ep := map[string]any{"id": id, "url": url, "secret": secret}
	if len(events) > 0 {
		ep["events"] = events
	}
	return ep
}

// runReceiver is a verifying receiver on loopback that keeps bodies and
// headers.
type runReceiver struct {
	*receiver.Receiver
	URL string

	mu      sync.Mutex
	headers map[string]http.Header // first request per id
	all     []receiver.Delivery
}

func newRunReceiver(t *testing.T, secret string, status func(receiver.Delivery) int) *runReceiver {
	t.Helper()
	r, err := receiver.New(true, secret)
	if err != nil {
		t.Fatal(err)
	}
	tr := &runReceiver{Receiver: r, headers: map[string]http.Header{}}
	r.Status = status
	r.OnDelivery = func(d receiver.Delivery) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if _, ok := tr.headers[d.ID]; !ok {
			tr.headers[d.ID] = d.Header
		}
		tr.all = append(tr.all, d)
	}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	tr.URL = srv.URL + "/hooks"
	return tr
}

// header returns the headers of the first request with id.
func (tr *runReceiver) header(id string) http.Header {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.headers[id]
}

func (tr *runReceiver) deliveries() []receiver.Delivery {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]receiver.Delivery(nil), tr.all...)
}

// runWaitFor polls cond until it holds or timeout passes.
func runWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool, diag func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			d := ""
			if diag != nil {
				d = diag()
			}
			t.Fatalf("timed out after %s waiting for %s\n%s", timeout, what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runProc is walhook run started through Run in this test process.
type runProc struct {
	cancel         context.CancelFunc
	done           chan error
	stdout, stderr *syncbuf.Buffer
}

func startRunProc(t *testing.T, args ...string) *runProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &runProc{cancel: cancel, done: make(chan error, 1), stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}}
	go func() { p.done <- Run(ctx, append([]string{"run"}, args...), p.stdout, p.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			t.Errorf("walhook run did not stop within 60s of cancel")
		}
		if t.Failed() {
			t.Logf("walhook run stdout:\n%s\nstderr (runTail):\n%s", p.stdout.String(), runTail(p.stderr.String(), 6000))
		}
	})
	return p
}

// stop cancels the run and returns its error.
func (p *runProc) stop(t *testing.T) error {
	t.Helper()
	p.cancel()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("walhook run did not stop within 60s of cancel")
		return nil
	}
}

// exited reports a run that stopped by itself.
func (p *runProc) exited() (error, bool) {
	select {
	case err := <-p.done:
		p.done <- err
		return err, true
	default:
		return nil, false
	}
}

func (p *runProc) diag() string {
	if err, ok := p.exited(); ok {
		return fmt.Sprintf("walhook run exited: %v\n%s", err, runTail(p.stderr.String(), 4000))
	}
	return runTail(p.stderr.String(), 4000)
}

func runTail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// runBody decodes a JSON body into a map.
func runBody(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		t.Fatalf("body %s: %v", b, err)
	}
	return m
}

// runBodyKeys lists a JSON object's top-level keys in document order.
func runBodyKeys(t *testing.T, b []byte) []string {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("body %s is not an object", b)
	}
	var keys []string
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := d.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func runCountsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// runCheckHeaders checks PRODUCT.md's request headers: X-Webhook-* and their
// byte-identical webhook-* copies, the event, the content type.
func runCheckHeaders(t *testing.T, h http.Header, id string, event any) {
	t.Helper()
	if h.Get("X-Webhook-ID") != id || h.Get("webhook-id") != id {
		t.Errorf("X-Webhook-ID %q, webhook-id %q, want %q", h.Get("X-Webhook-ID"), h.Get("webhook-id"), id)
	}
	if h.Get("X-Webhook-Event") != event {
		t.Errorf("X-Webhook-Event %q, body event %v", h.Get("X-Webhook-Event"), event)
	}
	if ts := h.Get("X-Webhook-Timestamp"); ts == "" || ts != h.Get("webhook-timestamp") {
		t.Errorf("X-Webhook-Timestamp %q, webhook-timestamp %q", ts, h.Get("webhook-timestamp"))
	}
	if sig := h.Get("X-Webhook-Signature"); !strings.HasPrefix(sig, "v1,") || sig != h.Get("webhook-signature") {
		t.Errorf("X-Webhook-Signature %q, webhook-signature %q", sig, h.Get("webhook-signature"))
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
}

// testPool opens a pool on dsn, closed when the test ends.
func testPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// storeRunConfig writes the items config for source d with the store in
// a cluster of its own and rc as the one endpoint.
func storeRunConfig(t *testing.T, d *runDB, store *pgtest.Cluster, rc *runReceiver) (string, *config.Config) {
	t.Helper()
	s := d.settings()
	s["store.dsn"] = strings.Replace(store.DSN("postgres"), "postgres@", "postgres:"+runDSNPassword+"@", 1)
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	return runConfig(t, []byte(runItemsConfig), s)
}

// twoClusterItems prepares the items schema on a source cluster and the
// outbox on a store cluster of its own (so either can be stopped or
// frozen), with the config for rc on slot.
func twoClusterItems(t *testing.T, slot string) (db *runDB, src, store *pgtest.Cluster, rc *runReceiver, file string) {
	t.Helper()
	src, store = pgtest.StartT(t, pgtest.Options{}), pgtest.StartT(t, pgtest.Options{})
	db = &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: slot}
	if _, err := db.pool.Exec(context.Background(), runItemsSchema); err != nil {
		t.Fatalf("load schema: %v", err)
	}
	rc = newRunReceiver(t, runSecret, nil)
	file, cfg := storeRunConfig(t, db, store, rc)
	db.setup(t, cfg) // publication, slot (and a store on the source, unused)
	migrateStore(t, store)
	return db, src, store, rc, file
}

// migrateStore sets up the store schema in cluster store and returns a
// pool on it.
func migrateStore(t *testing.T, store *pgtest.Cluster) *pgxpool.Pool {
	t.Helper()
	pool := testPool(t, store.DSN("postgres"))
	if _, err := dispatch.Migrate(context.Background(), pool, "walhook"); err != nil {
		t.Fatalf("migrate the store: %v", err)
	}
	return pool
}
