package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/internal/syncbuf"
)

// PostgreSQL creates a logical slot only once every transaction running
// when it began has ended, and a prepared transaction lasts until COMMIT
// PREPARED or ROLLBACK PREPARED, across restarts. With a forgotten one,
// setup waited without a word for as long as it lasted; it now says, a
// few seconds in, what it waits for and the statements that end it, and
// finishes once it has ended (TestSetupSaysWhatTheSlotWaitsFor).
func TestSetupSaysWhatTheSlotWaitsFor(t *testing.T) {
	t.Parallel()
	src := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"max_prepared_transactions": "2"}})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_prepared"}
	db.exec(t, runItemsSchema)
	db.exec(t, `BEGIN; INSERT INTO items (id) VALUES (1); PREPARE TRANSACTION 'forgotten'`)
	file, _ := runConfig(t, []byte(runItemsConfig), db.settings())

	var stdout, stderr syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), []string{"setup", "--config", file}, &stdout, &stderr) }()
	runWaitFor(t, 30*time.Second, "the waiting line", func() bool {
		return strings.Contains(stdout.String(), "waiting to create replication slot wh_prepared")
	}, func() string { return stdout.String() + stderr.String() })
	select {
	case err := <-done:
		t.Fatalf("setup ended with a prepared transaction open: %v\n%s%s", err, stdout.String(), stderr.String())
	default:
	}
	ckWantLines(t, stdout.String(), `^  prepared transaction 'forgotten' \(database postgres, owner postgres, prepared .* UTC\) — fix: in database postgres, COMMIT PREPARED 'forgotten'; or ROLLBACK PREPARED 'forgotten';$`)

	db.exec(t, `ROLLBACK PREPARED 'forgotten'`)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("setup: %v\n%s%s", err, stdout.String(), stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("setup did not end after the prepared transaction did")
	}
	t.Logf("setup:\n%s", stdout.String())
	ckWantLines(t, stdout.String(), `^created replication slot wh_prepared \(pgoutput\) at `)
}
