package main

import (
	"strings"
	"testing"
	"time"
)

// A rule without auction_id: takes the envelope's auction_id from the
// table's auction_id column. That column renamed (or dropped) while
// walhook runs made every later event's auction_id null, silently, and an
// endpoint subscribed to given auctions got none of them. The periodic
// check reports it, and the next change stops the run there, naming the
// column and the fix; with auction_id: naming the new column, the restart
// delivers that change to the subscribed endpoint.
func TestRunAuctionIDColumnRenamedWhileRunning(t *testing.T) {
	t.Parallel()
	all := newRunReceiver(t, runSecret, nil)
	one := newRunReceiver(t, runSecret2, nil)
	sub := runEndpoint("one", one.URL, runSecret2)
	sub["auctions"] = []string{"auc_1"}
	rcEndpoints := []map[string]any{runEndpoint("all", all.URL, runSecret), sub}
	db := newRunDB(t, runItemsSchema)
	s := db.settings()
	s["endpoints"] = rcEndpoints
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 1)
	runWaitFor(t, 30*time.Second, "item 1 at both", func() bool { return all.Unique() == 1 && one.Unique() == 1 }, p.diag)

	db.exec(t, `ALTER TABLE items RENAME COLUMN auction_id TO auction_ref`)
	db.exec(t, `INSERT INTO items (id, auction_ref) VALUES (4, 'auc_1')`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	const want = `column "auction_id" of public.items, which this rule's events take their auction_id from (it has no auction_id:), does not exist any more`
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "walhook.yaml:") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 naming the auction_id column at its rule", err, ExitCode(err))
	}
	if all.Unique() != 1 {
		t.Fatalf("%d deliveries to the unsubscribed endpoint, want 1 (item 4 not sent with a null auction_id)", all.Unique())
	}

	file, _ = runConfig(t, []byte(strings.Replace(runItemsConfig, "operations:", "auction_id: auction_ref\n    operations:", 1)), s)
	p = startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "item 4 at both", func() bool { return all.Unique() == 2 && one.Unique() == 2 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
