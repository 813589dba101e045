package dispatch

import (
	"context"
	"fmt"
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

// A batch of 2xx outcomes logs an attempt for every delivery that still
// exists, and none for one whose endpoint was deleted meanwhile: before,
// or while the batch runs (the delete not yet committed). Nothing deletes
// an attempt whose delivery is gone, so one written then would stay
// forever. A delivery whose lease passed on stays pending (it is sent
// again) but keeps the log entry of the attempt that happened, once.
func TestRecordedAttemptsFollowTheirDelivery(t *testing.T) {
	a, b := setupAdmin(t)
	ctx := context.Background()
	e := mustCreate(t, a, EndpointInput{})
	me := b.d.opts.InstanceID
	for _, id := range []string{"held", "held-deleting", "lost", "lost-deleting"} {
		b.addDelivery(t, id, e.ID, "delivering", 1, time.Now())
	}
	lease := time.Now().Add(time.Minute).Truncate(time.Microsecond)
	b.exec(t, `UPDATE {{schema}}.deliveries SET locked_by = $1, locked_until = $2
		WHERE id IN ('held', 'held-deleting')`, me, lease)
	// The lease of the other two passed: the rescue made them pending.
	b.exec(t, `UPDATE {{schema}}.deliveries SET status = 'pending' WHERE id IN ('lost', 'lost-deleting')`)
	ok := func(id string) success {
		return success{c: claimed{id: id, endpointID: e.ID, attempt: 1, lease: lease}, started: time.Now(),
			res: Result{StatusCode: http.StatusOK, Duration: time.Millisecond}}
	}

	// Deletes of two deliveries, not committed while the batch is written.
	deleting, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer deleting.Rollback(ctx)
	if _, err := deleting.Exec(ctx, q(`DELETE FROM {{schema}}.deliveries WHERE id IN ('held-deleting', 'lost-deleting')`)); err != nil {
		t.Fatal(err)
	}
	recorded := make(chan error, 1)
	go func() {
		recorded <- b.d.recordSuccesses(ctx, []success{ok("held"), ok("held-deleting"), ok("lost"), ok("lost-deleting"), ok("gone")})
	}()
	waitForLockWait(t, b.pool, "deliveries", func() string {
		select {
		case err := <-recorded:
			return fmt.Sprintf("the batch was written without waiting for the deletes (%v)", err)
		default:
			return ""
		}
	})
	if err := deleting.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-recorded; err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.attempts a
		WHERE NOT EXISTS (SELECT 1 FROM {{schema}}.deliveries d WHERE d.id = a.delivery_id)`); n != 0 {
		t.Errorf("%d attempts logged for deliveries that are gone", n)
	}
	for id, want := range map[string]string{"held": "delivered", "lost": "pending"} {
		var status string
		var attempts int
		if err := b.pool.QueryRow(ctx, q(`SELECT status, (SELECT count(*) FROM {{schema}}.attempts WHERE delivery_id = d.id)
			FROM {{schema}}.deliveries d WHERE id = $1`), id).Scan(&status, &attempts); err != nil {
			t.Fatal(err)
		}
		if status != want || attempts != 1 {
			t.Errorf("%s: %s with %d attempts logged, want %s with 1", id, status, attempts, want)
		}
	}

	// The same batch written again (a retry after a commit whose answer
	// was lost) logs nothing twice.
	s := ok("lost")
	if err := b.pool.QueryRow(ctx, q(`SELECT started_at FROM {{schema}}.attempts WHERE delivery_id = 'lost'`)).Scan(&s.started); err != nil {
		t.Fatal(err)
	}
	if err := b.d.recordSuccesses(ctx, []success{s}); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, `SELECT count(*) FROM {{schema}}.attempts WHERE delivery_id = 'lost'`); n != 1 {
		t.Errorf("the lost lease's attempt is logged %d times, want once", n)
	}
}
