package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/mapper"
)

// An Append whose COMMIT itself fails (a deferred constraint trigger that
// raises at commit) reports the error, stores nothing, and hands nothing
// to the workers (the deliveries its insert returned are not started);
// the room it took is given back. The same batch appended again once the
// trigger is gone is stored and handed as usual.
func TestAppendFailingAtCommitHandsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) { o.PollInterval = time.Hour })
	b.endpoint(t, "e1", rc.URL, nil, nil, true)
	if _, err := b.pool.Exec(ctx, `
		CREATE FUNCTION walhook.refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'refused at commit by the test'; END $$;
		CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON walhook.deliveries
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION walhook.refuse_at_commit()`); err != nil {
		t.Fatal(err)
	}
	obRun(t, d)
	waitLoopOpen(t, d)
	evs := []mapper.Event{obEvent("a.b", ""), obEvent("a.b", "")}
	batch := []TxEvents{{Xid: 7, CommitLSN: 99, EndLSN: 100, Final: true, CommitTime: time.Now(), Events: evs}}
	err := d.Append(ctx, "slot", "sys", batch)
	if err == nil || !strings.Contains(err.Error(), "refused at commit by the test") {
		t.Fatalf("Append = %v, want the deferred trigger's error", err)
	}
	for table, want := range map[string]int{"events": 0, "deliveries": 0, "cursor": 0} {
		if n := b.count(t, `SELECT count(*) FROM walhook.`+table); n != want {
			t.Errorf("%d rows in %s after the failed commit, want %d", n, table, want)
		}
	}
	obWaitFor(t, "room given back", func() bool { return d.hold.held() == 0 })
	time.Sleep(200 * time.Millisecond)
	if rc.n() != 0 {
		t.Fatalf("%d requests sent for an Append that did not commit", rc.n())
	}
	if _, err := b.pool.Exec(ctx, `DROP TRIGGER refuse_at_commit ON walhook.deliveries`); err != nil {
		t.Fatal(err)
	}
	if err := d.Append(ctx, "slot", "sys", batch); err != nil {
		t.Fatal(err)
	}
	obWaitFor(t, "2 deliveries", func() bool { return rc.n() == 2 })
	if n := b.count(t, `SELECT count(*) FROM walhook.cursor WHERE lsn = '0/64'`); n != 1 {
		t.Error("the cursor did not move to the replayed Append's end")
	}
}

// The store connection killed inside Append's transaction (after BEGIN
// and the endpoints version, while it reads the endpoints) fails the
// Append with nothing stored, and the next Append on the pool works.
func TestAppendConnectionKilledInTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b := obSetup(t, nil)
	b.endpoint(t, "e1", "https://x.example/", nil, nil, false)
	// Block the endpoints read (the cache is empty, so Append reads them
	// after locking the version row).
	locker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback(ctx)
	if _, err := locker.Exec(ctx, `LOCK TABLE walhook.endpoints IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	errc := make(chan error, 1)
	go func() {
		errc <- d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 7, CommitLSN: 99, EndLSN: 100, Final: true,
			CommitTime: time.Now(), Events: []mapper.Event{ev}}})
	}()
	obWaitFor(t, "Append waiting for the endpoints", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
			WHERE NOT l.granted AND c.relname = 'endpoints'`) == 1
	})
	if b.count(t, `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
			WHERE l.granted AND c.relname = 'endpoints_version' AND l.pid = (SELECT pid FROM pg_locks l2
			JOIN pg_class c2 ON c2.oid = l2.relation WHERE NOT l2.granted AND c2.relname = 'endpoints')`) != 1 {
		t.Fatal("the waiting Append does not hold the endpoints version yet")
	}
	if n := b.count(t, `SELECT count(*) FROM (SELECT pg_terminate_backend(l.pid) FROM pg_locks l
			JOIN pg_class c ON c.oid = l.relation WHERE NOT l.granted AND c.relname = 'endpoints') t`); n != 1 {
		t.Fatalf("terminated %d backends, want 1", n)
	}
	if err := <-errc; err == nil {
		t.Fatal("Append succeeded on a killed connection")
	}
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for table, want := range map[string]int{"events": 0, "deliveries": 0, "cursor": 0} {
		if n := b.count(t, `SELECT count(*) FROM walhook.`+table); n != want {
			t.Errorf("%d rows in %s after the killed Append, want %d", n, table, want)
		}
	}
	obAppend(t, d, 100, ev)
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries`); n != 1 {
		t.Errorf("%d deliveries after the second Append, want 1", n)
	}
}

// An Append whose context ends while its pipeline waits in the store
// (here the cursor update waits for a row lock, after the statements were
// prepared) reports the error and hands nothing over. The store has the
// whole pipeline, COMMIT included, and runs it once the lock is free: the
// Append is then a reported failure of a committed batch. The replay is
// a no-op, and the delivery the abandoned Append stored as claimed by
// this process (not handed) is sent once its lease runs out: nothing is
// lost, nothing is sent twice.
func TestAppendDeadlineMidPipeline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) {
		o.Lease = 2 * time.Second
		o.Client.Timeout = time.Second
	})
	b.endpoint(t, "e1", rc.URL, nil, nil, true)
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 1, CommitLSN: 49, EndLSN: 50, Final: true}}); err != nil {
		t.Fatal(err)
	}
	obRun(t, d)
	waitLoopOpen(t, d)
	locker, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback(ctx)
	if _, err := locker.Exec(ctx, `SELECT * FROM walhook.cursor FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	ev := obEvent("a.b", "")
	batch := []TxEvents{{Xid: 7, CommitLSN: 99, EndLSN: 100, Final: true, CommitTime: time.Now(), Events: []mapper.Event{ev}}}
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	err = d.Append(tctx, "slot", "sys", batch)
	cancel()
	if err == nil {
		t.Fatal("Append succeeded past its deadline")
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.events`); n != 0 {
		t.Fatalf("%d events visible while the Append's transaction waits", n)
	}
	if err := locker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	obWaitFor(t, "room given back", func() bool { return d.hold.held() == 0 })
	time.Sleep(300 * time.Millisecond)
	t.Logf("events committed by the abandoned Append: %d", b.count(t, `SELECT count(*) FROM walhook.events`))
	if rc.n() != 0 {
		t.Fatalf("%d requests sent at once for an Append that reported failure", rc.n())
	}
	if err := d.Append(ctx, "slot", "sys", batch); err != nil {
		t.Fatal(err)
	}
	obWaitFor(t, "the delivery sent", func() bool { return rc.n() >= 1 })
	time.Sleep(500 * time.Millisecond)
	if rc.n() != 1 {
		t.Fatalf("%d requests, want 1", rc.n())
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.cursor WHERE lsn = '0/64'`); n != 1 {
		t.Error("the cursor is not at the batch's end")
	}
}

// Every shape of Append's pipeline reads its results in the order queued:
// events only (not final), the cursor only, pending deliveries with the
// notify, handed deliveries, several events INSERT parts.
func TestAppendPipelineShapes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := obNewReceiver(t, nil)
	d, b := obSetup(t, func(o *Options) { o.insertBytes = 2000 })
	big := func() []mapper.Event {
		var evs []mapper.Event
		for i := range 12 {
			e := obEvent("a.b", "")
			e.Data = json.RawMessage(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", 400+i*50)))
			evs = append(evs, e)
		}
		return evs
	}
	check := func(what string, events, deliveries int, cursor string) {
		t.Helper()
		if n := b.count(t, `SELECT count(*) FROM walhook.events`); n != events {
			t.Errorf("%s: %d events, want %d", what, n, events)
		}
		if n := b.count(t, `SELECT count(*) FROM walhook.deliveries`); n != deliveries {
			t.Errorf("%s: %d deliveries, want %d", what, n, deliveries)
		}
		if got := b.count(t, `SELECT count(*) FROM walhook.cursor WHERE lsn::text = $1`, cursor); cursor != "" && got != 1 {
			t.Errorf("%s: the cursor is not at %s", what, cursor)
		}
		if cursor == "" {
			if n := b.count(t, `SELECT count(*) FROM walhook.cursor`); n != 0 {
				t.Errorf("%s: a cursor stored", what)
			}
		}
	}
	// No endpoint: events only, not final, one part and several.
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 1, Events: []mapper.Event{obEvent("a.b", "")}}}); err != nil {
		t.Fatal(err)
	}
	check("events only, not final", 1, 0, "")
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 1, Events: big()}}); err != nil {
		t.Fatal(err)
	}
	check("several parts, not final", 13, 0, "")
	// The cursor only.
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 2, CommitLSN: 9, EndLSN: 10, Final: true}}); err != nil {
		t.Fatal(err)
	}
	check("cursor only", 13, 0, "0/A")
	// Pending deliveries (no claim loop) with the notify, several parts.
	b.endpoint(t, "e1", rc.URL, nil, nil, true)
	b.endpoint(t, "e2", rc.URL, []string{"nomatch"}, nil, true)
	b.endpoint(t, "e3", rc.URL, nil, nil, false)
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 3, CommitLSN: 19, EndLSN: 20, Final: true, Events: big()}}); err != nil {
		t.Fatal(err)
	}
	check("pending, several parts, final", 25, 24, "0/14")
	if n := b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'pending'`); n != 12 {
		t.Errorf("%d pending deliveries, want 12", n)
	}
	// Pending, not final.
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 4, Events: []mapper.Event{obEvent("a.b", "")}}}); err != nil {
		t.Fatal(err)
	}
	check("pending, not final", 26, 26, "0/14")
	// Only skipped deliveries (no pending, so no notify), final.
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET active = false WHERE id = 'e1'`); err != nil {
		t.Fatal(err)
	}
	if err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 5, CommitLSN: 29, EndLSN: 30, Final: true, Events: []mapper.Event{obEvent("a.b", "")}}}); err != nil {
		t.Fatal(err)
	}
	check("skipped only, final", 27, 28, "0/1E")
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.endpoints SET active = true WHERE id = 'e1'`); err != nil {
		t.Fatal(err)
	}
	// Handed (claim loop running) and pending mixed, final, several parts.
	obRun(t, d)
	waitLoopOpen(t, d)
	if err := d.Append(ctx, "slot", "sys", []TxEvents{
		{Xid: 6, Events: big()},
		{Xid: 6, CommitLSN: 39, EndLSN: 40, Final: true, Events: big()},
	}); err != nil {
		t.Fatal(err)
	}
	check("handed, final, two txs", 51, 76, "0/28")
	obWaitFor(t, "every pending and handed delivery sent", func() bool {
		return b.count(t, `SELECT count(*) FROM walhook.deliveries WHERE status = 'delivered'`) == 12+1+24
	})
	if startedVia(d, "append") == 0 {
		t.Error("nothing was handed over by the Append with the claim loop running")
	}
	// Nothing stays idle in a transaction.
	if n := b.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`); n != 0 {
		t.Errorf("%d sessions idle in transaction", n)
	}
}
