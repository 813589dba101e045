package dispatch

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/pgtest"
)

// A store restart between the receiver's 2xx and its recording does not
// turn the success into a redelivery: the recorder retries until the
// store is back (within the lease), so the delivery ends delivered after
// the one request the receiver already answered.
func TestRecorderRidesOutAStoreRestart(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.Options{})
	db, err := c.CreateDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(context.Background(), c.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := Migrate(context.Background(), pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	b := &obBundle{pool: pool, dsn: c.DSN(db)}

	var once sync.Once
	restarted := make(chan error, 1)
	rc := obNewReceiver(t, func(int, http.ResponseWriter, *http.Request) int {
		// The store goes down while the receiver answers, for 3 s.
		once.Do(func() {
			if err := c.Stop(); err != nil {
				restarted <- err
				return
			}
			go func() {
				time.Sleep(3 * time.Second)
				restarted <- c.StartAgain()
			}()
		})
		return http.StatusOK
	})
	d := b.dispatcher(t, func(o *Options) {
		o.Workers = 1
		// A slow cluster stop (inside the receiver's answer) must not
		// time the attempt out.
		o.Client.Timeout = 30 * time.Second
		o.Lease = time.Minute
	})
	b.endpoint(t, "whk_1", rc.URL, nil, nil, true)
	obAppend(t, d, 10, obEvent("a.b", ""))
	obRun(t, d)
	if err := <-restarted; err != nil {
		t.Fatalf("restart the store: %v", err)
	}
	obWaitFor(t, "the delivery recorded", func() bool {
		var n int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`).Scan(&n)
		return err == nil && n == 1
	})
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE attempts = 1`); n != 1 {
		t.Error("the delivery took more than the one attempt the receiver answered")
	}
	if n := rc.n(); n != 1 {
		t.Errorf("the receiver got %d requests, want the 1 it answered", n)
	}
}
