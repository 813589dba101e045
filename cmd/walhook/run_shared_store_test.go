package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Two configs (two source databases, each with its own slot) pointed at
// one store schema: each run makes the store's static endpoints its
// config's, deleting the other's (with their deliveries), and fans every
// event out to every endpoint in the store, the other config's too. Run
// must refuse the second config before it touches the store's endpoints,
// saying to give each its own store.schema; setup refuses it as well.
// Before, the second run started, deleted static:a and took A's events
// to B's endpoint only (and the fix of the other-system cursor error
// suggested this very setup: "another store.schema or source.slot").
func TestRunRefusesAStoreSchemaAnotherSlotUses(t *testing.T) {
	t.Parallel()
	rcA, rcB := newRunReceiver(t, runSecret, nil), newRunReceiver(t, runSecret, nil)
	dbA, fileA := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("a", rcA.URL, runSecret)}})
	dbB := newRunDB(t, runItemsSchema)
	s := dbB.settings()
	s["store.dsn"] = strings.Replace(dbA.dsn, "postgres@", "postgres:"+runDSNPassword+"@", 1)
	s["endpoints"] = []map[string]any{runEndpoint("b", rcB.URL, runSecret)}
	fileB, cfgB := runConfig(t, []byte(runItemsConfig), s)
	dbB.setup(t, cfgB)

	pA := startRunProc(t, "--config", fileA)
	insertItems(t, dbA, 1, 1)
	runWaitFor(t, 30*time.Second, "A's first delivery", func() bool { return rcA.Unique() == 1 }, pA.diag)

	pB := startRunProc(t, "--config", fileB)
	runWaitFor(t, 30*time.Second, "B's run to refuse the store", func() bool {
		_, exited := pB.exited()
		return exited
	}, func() string { return "B is running:\n" + pB.diag() })
	err, _ := pB.exited()
	if err == nil {
		t.Fatal("B's run exited without an error")
	}
	for _, want := range []string{dbA.slot, "store.schema", "static endpoints"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("B's error does not say %q:\n%v", want, err)
		}
	}
	t.Logf("B refused with: %v", err)
	if n := dbA.count(t, `SELECT count(*) FROM walhook.endpoints WHERE id = 'static:a'`); n != 1 {
		t.Errorf("A's static endpoint is gone from the store")
	}
	// setup refuses it too (before the slot; B's exists already here).
	var out, errOut strings.Builder
	if err := Run(context.Background(), []string{"setup", "--config", fileB}, &out, &errOut); err == nil ||
		!strings.Contains(err.Error(), "own store.schema") {
		t.Errorf("setup of B on A's store schema: %v, want the refusal\n%s", err, out.String())
	}
	// check says so too, with the fix.
	out.Reset()
	errOut.Reset()
	if err := Run(context.Background(), []string{"check", "--config", fileB}, &out, &errOut); err == nil ||
		!strings.Contains(out.String(), "holds the cursor of slot "+dbA.slot) || !strings.Contains(out.String(), "own store.schema") {
		t.Errorf("check of B on A's store schema: %v, want a FAIL line naming slot %s with the fix\n%s", err, dbA.slot, out.String())
	}
	insertItems(t, dbA, 2, 2)
	runWaitFor(t, 30*time.Second, "A's second delivery", func() bool { return rcA.Unique() == 2 }, pA.diag)
	if rcB.Unique() != 0 {
		t.Errorf("B's endpoint received %d of A's events", rcB.Unique())
	}
}
