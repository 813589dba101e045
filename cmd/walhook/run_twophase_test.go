package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// Two-phase commit on a rule table. walhook does not ask pgoutput for
// two_phase, so a prepared transaction is decoded at its COMMIT PREPARED,
// as one transaction, and one rolled back (ROLLBACK PREPARED) is never
// sent. Both stay prepared across a restart of walhook after its cursor
// passed their PREPARE (a later transaction was confirmed meanwhile):
// the committed one's events arrive once, the rolled-back one's never.
func TestRunTwoPhaseCommit(t *testing.T) {
	t.Parallel()
	src := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"max_prepared_transactions": "4"}})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_twophase"}
	db.exec(t, runItemsSchema)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: item.created
    table: public.items
    operations: [insert]
    data: [id, n]
  - event: item.updated
    table: public.items
    operations: [update]
    data: [id, n]
`), s)
	db.setup(t, cfg)

	p := startRunProc(t, "--config", file)
	db.exec(t, `BEGIN; INSERT INTO items (id, n) VALUES (1, 1); UPDATE items SET n = 2 WHERE id = 1; PREPARE TRANSACTION 'a'`)
	db.exec(t, `BEGIN; INSERT INTO items (id, n) VALUES (2, 1); PREPARE TRANSACTION 'b'`)
	db.exec(t, `INSERT INTO items (id, n) VALUES (3, 1)`)
	runWaitFor(t, 30*time.Second, "item 3", func() bool { return rc.Unique() == 1 }, p.diag)
	runWaitFor(t, 30*time.Second, "the cursor past the prepares", func() bool { return db.cursor(t) > 0 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}

	p = startRunProc(t, "--config", file)
	db.exec(t, `COMMIT PREPARED 'a'`)
	db.exec(t, `ROLLBACK PREPARED 'b'`)
	db.exec(t, `INSERT INTO items (id, n) VALUES (4, 1)`)
	runWaitFor(t, 30*time.Second, "item 4", func() bool {
		for _, d := range rc.deliveries() {
			if data, _ := runBody(t, d.Body)["data"].(map[string]any); fmt.Sprint(data["id"]) == "4" {
				return true
			}
		}
		return false
	}, p.diag)
	time.Sleep(time.Second) // a late duplicate would come by now
	got := map[string]int{}
	for _, d := range rc.deliveries() {
		b := runBody(t, d.Body)
		data, _ := b["data"].(map[string]any)
		got[b["event"].(string)+" "+fmt.Sprint(data["id"])+"/"+fmt.Sprint(data["n"])]++
	}
	want := map[string]int{"item.created 3/1": 1, "item.created 1/1": 1, "item.updated 1/2": 1, "item.created 4/1": 1}
	if !runCountsEqual(got, want) || rc.Unique() != 4 {
		t.Fatalf("deliveries %v (%d unique), want %v: the committed prepared transaction once, the rolled-back one never", got, rc.Unique(), want)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
