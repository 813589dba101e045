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

// A prepared transaction forgotten on the source keeps the slot's WAL
// (restart_lsn stays before it) whatever walhook confirms, so
// walhook_slot_retained_wal_bytes grows with nothing wrong in walhook.
// check warns about it and a running walhook logs it, each with the
// statements that end it. (Not parallel: it shortens openTransactionAge.)
func TestRunLogsAnOldPreparedTransaction(t *testing.T) {
	defer func(d time.Duration) { openTransactionAge = d }(openTransactionAge)
	openTransactionAge = time.Second
	src := pgtest.StartT(t, pgtest.Options{Settings: map[string]string{"max_prepared_transactions": "2"}})
	db := &runDB{dsn: src.DSN("postgres"), pool: testPool(t, src.DSN("postgres")), schema: "walhook", slot: "wh_prepared_old"}
	db.exec(t, runItemsSchema)
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(runItemsConfig), s)
	db.setup(t, cfg)
	db.exec(t, `BEGIN; INSERT INTO items (id) VALUES (1); PREPARE TRANSACTION 'forgotten'`)
	time.Sleep(2 * openTransactionAge)

	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check: exit %d, want 0 (a warning)", code)
	}
	ckWantLines(t, out, `^warn  open transaction: prepared transaction 'forgotten' \(database postgres, .*\) is older than 1s: it keeps the WAL every logical slot retains .* — fix: in database postgres, COMMIT PREPARED 'forgotten'; or ROLLBACK PREPARED 'forgotten';$`)

	p := startRunProc(t, "--config", file)
	runWaitFor(t, 3*publicationPoll, "the log line", func() bool {
		return strings.Contains(p.stderr.String(), "open transactions older than 1s on the source") &&
			strings.Contains(p.stderr.String(), `ROLLBACK PREPARED 'forgotten';`)
	}, p.diag)
	db.exec(t, `COMMIT PREPARED 'forgotten'`)
	runWaitFor(t, 3*publicationPoll, "the end of it logged", func() bool {
		return strings.Contains(p.stderr.String(), "no old open transaction holds the slot's WAL any more")
	}, p.diag)
	runWaitFor(t, 30*time.Second, "item 1", func() bool { return rc.Unique() == 1 }, p.diag)
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
