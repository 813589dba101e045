package main

import (
	"strings"
	"testing"
	"time"
)

// A store whose tables lack what its schema_version row promises (a
// column dropped by hand, a store migrated by an unreleased build whose
// migration changed before release) answers every read of the cursor
// with the same error. run stops on it, naming it, instead of taking it
// for a lost store connection and taking the slot again and again.
func TestRunStopsWhenTheStoreLacksAColumnItsVersionPromises(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{"endpoints": []map[string]any{runEndpoint("r", rc.URL, runSecret)}})
	db.exec(t, `ALTER TABLE walhook.cursor DROP COLUMN id_epoch_from`)

	p := startRunProc(t, "--config", file)
	runWaitFor(t, 20*time.Second, "walhook run to stop", func() bool { _, ok := p.exited(); return ok }, p.diag)
	err, _ := p.exited()
	if err == nil || !strings.Contains(err.Error(), "id_epoch_from") || strings.Contains(err.Error(), "lost the store connection") {
		t.Fatalf("run stopped with %v; want the missing column named, not a lost connection", err)
	}
	if n := strings.Count(p.stderr.String(), "stopped replicating; waiting to take the slot again"); n > 0 {
		t.Errorf("run took the slot again %d times before it stopped", n)
	}
}
