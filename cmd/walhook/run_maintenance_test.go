package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// What a DBA runs on a mapped table while walhook runs — VACUUM FULL,
// CLUSTER and REINDEX (which rewrite its files: new relfilenodes, the
// same table), a new owner — and a transaction that rolls back to a
// savepoint: the changes after map as before, each once, nothing of the
// rolled-back subtransaction arrives, and the rule-table check stays
// quiet.
func TestRunTableMaintenanceWhileRunning(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, runItemsSchema+`ALTER TABLE items REPLICA IDENTITY FULL;`)
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
  - event: item.counted
    table: public.items
    operations: [update]
    changed: [n]
    data: [id, n]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	insertItems(t, db, 1, 2)
	runWaitFor(t, 30*time.Second, "items 1 and 2", func() bool { return rc.Unique() == 2 }, p.diag)

	owner := "dba_" + db.slot
	db.exec(t, `CREATE ROLE `+owner)
	t.Cleanup(func() { db.exec(t, `DROP OWNED BY `+owner+`; DROP ROLE `+owner) })
	for _, stmt := range []string{`VACUUM FULL items`, `CLUSTER items USING items_pkey`, `REINDEX TABLE CONCURRENTLY items`,
		`REINDEX TABLE items`, `ALTER TABLE items OWNER TO ` + owner} {
		db.exec(t, stmt)
	}
	db.exec(t, `UPDATE items SET n = n + 1 WHERE id = 1; UPDATE items SET n = n WHERE id = 2`)
	db.exec(t, `BEGIN; INSERT INTO items (id) VALUES (3); SAVEPOINT s; INSERT INTO items (id) VALUES (4);
		UPDATE items SET n = 9 WHERE id = 2; ROLLBACK TO SAVEPOINT s; INSERT INTO items (id) VALUES (5); COMMIT`)
	runWaitFor(t, 30*time.Second, "items 3 and 5", func() bool { return rc.Unique() == 5 }, p.diag)
	time.Sleep(publicationPoll + time.Second)
	if err, done := p.exited(); done {
		t.Fatalf("run stopped: %v", err)
	}
	got := map[string]int{}
	for _, d := range rc.deliveries() {
		b := runBody(t, d.Body)
		data, _ := b["data"].(map[string]any)
		got[fmt.Sprint(b["event"], " ", data["id"], " ", data["n"])]++
	}
	want := map[string]int{"item.created 1 0": 1, "item.created 2 0": 1, "item.counted 1 1": 1, "item.created 3 0": 1, "item.created 5 0": 1}
	if !runCountsEqual(got, want) {
		t.Fatalf("deliveries %v, want %v", got, want)
	}
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	if m := runMetrics(t, base); !strings.Contains(m, "\nwalhook_rule_table_problems 0\n") {
		t.Error("walhook_rule_table_problems is not 0 after the maintenance")
	}
}
