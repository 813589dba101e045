package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapper"
)

// obBundle is what the outbox tests share: the store pool and a way to
// start more Dispatchers on it.
type obBundle struct {
	pool *pgxpool.Pool
	dsn  string
}

// obTestOptions are fast options for tests: loopback allowed, millisecond
// retries, short polls.
func obTestOptions(t testing.TB) Options {
	return Options{
		Logger:       slog.New(slog.NewTextHandler(obTestWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:   prometheus.NewRegistry(),
		Client:       ClientOptions{Timeout: 5 * time.Second, AllowHTTP: true, Allow: []string{"127.0.0.0/8"}},
		Retry:        RetryPolicy{Schedule: []time.Duration{0, 5 * time.Millisecond, 10 * time.Millisecond}},
		PollInterval: 50 * time.Millisecond,
		Workers:      8,
	}
}

type obTestWriter struct{ t testing.TB }

func (w obTestWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// obSetup gives a fresh migrated store and a Dispatcher on it.
func obSetup(t testing.TB, mod func(*Options)) (*Dispatcher, *obBundle) {
	t.Helper()
	dsn := pgtest.Shared(t).NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := Migrate(context.Background(), pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	b := &obBundle{pool: pool, dsn: dsn}
	return b.dispatcher(t, mod), b
}

func (b *obBundle) dispatcher(t testing.TB, mod func(*Options)) *Dispatcher {
	t.Helper()
	o := obTestOptions(t)
	if mod != nil {
		mod(&o)
	}
	d, err := New(b.pool, o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// obRun runs d until the test ends and checks that it stops cleanly.
func obRun(t testing.TB, d *Dispatcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run returned %v, want nil after cancel", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// obEndpoint inserts an API-style endpoint and returns its id.
func (b *obBundle) endpoint(t testing.TB, id, url string, events, auctions []string, active bool) string {
	t.Helper()
	if events == nil {
		events = []string{}
	}
	if auctions == nil {
		auctions = []string{}
	}
	_, err := b.pool.Exec(context.Background(), `INSERT INTO walhook.endpoints (id, url, events, auctions, secret, active)
		VALUES ($1, $2, $3, $4, $5, $6)`, id, url, events, auctions, obSecret, active)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// obSecret is a fixed test secret.
const obSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

var obSeq struct {
	sync.Mutex
	n int
}

// obEvent makes an event with a unique id.
func obEvent(typ, auction string) mapper.Event {
	obSeq.Lock()
	obSeq.n++
	n := obSeq.n
	obSeq.Unlock()
	return mapper.Event{
		ID: fmt.Sprintf("ev-%d-%d", time.Now().UnixNano(), n), Type: typ, AuctionID: auction,
		Envelope: mapper.EnvelopeAuctionExcellence, OccurredAt: time.Now().UTC().Truncate(time.Millisecond),
		Data: json.RawMessage(fmt.Sprintf(`{"n":%d,"z":"last","a":"first"}`, n)), Table: "public.t", Position: n,
	}
}

// obAppend appends events as one final transaction ending at lsn.
func obAppend(t testing.TB, d *Dispatcher, lsn cdc.LSN, evs ...mapper.Event) {
	t.Helper()
	err := d.Append(context.Background(), "slot", "sys", []TxEvents{{Xid: 7, CommitLSN: lsn - 1, EndLSN: lsn, Final: true,
		CommitTime: time.Now(), Events: evs}})
	if err != nil {
		t.Fatal(err)
	}
}

// obWaitFor polls cond until it holds; the deadline only guards against a
// hang, it asserts nothing about speed.
func obWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (b *obBundle) count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// obRequest is one request a test receiver saw.
type obRequest struct {
	Header http.Header
	Body   []byte
	At     time.Time
}

// obReceiver is a loopback HTTP receiver answering with status(n) for the
// n-th request (0-based) it sees.
type obReceiver struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []obRequest
}

func obNewReceiver(t testing.TB, status func(n int, w http.ResponseWriter, r *http.Request) int) *obReceiver {
	rc := &obReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.reqs)
		rc.reqs = append(rc.reqs, obRequest{Header: r.Header.Clone(), Body: body, At: time.Now()})
		rc.mu.Unlock()
		code := 200
		if status != nil {
			code = status(n, w, r)
		}
		if code != 0 {
			w.WriteHeader(code)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *obReceiver) requests() []obRequest {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]obRequest(nil), rc.reqs...)
}

func (rc *obReceiver) n() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.reqs)
}

// waitForLockWait waits until a session of pool's database waits on a lock
// while running a statement containing what. abort, when set, is asked
// on every look; a non-empty answer fails the test at once.
func waitForLockWait(t *testing.T, pool *pgxpool.Pool, what string, abort func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, what).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if abort != nil {
			if msg := abort(); msg != "" {
				t.Fatal(msg)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session waited on a lock in a statement with %q", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// firstWaitsFor is a receiver's answer: the first request answers 200 once
// release is closed (it holds its endpoint's in-flight place until then),
// every later one answers status at once.
func firstWaitsFor(release <-chan struct{}, status int) func(int, http.ResponseWriter, *http.Request) int {
	return func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			<-release
			return 200
		}
		return status
	}
}
