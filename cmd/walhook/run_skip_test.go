package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/cdc"
)

const skipSchema = `
CREATE TABLE members (id bigint PRIMARY KEY, role text NOT NULL);
ALTER TABLE members REPLICA IDENTITY FULL;
CREATE TABLE items (id bigint PRIMARY KEY, auction_id text, n int NOT NULL DEFAULT 0);
INSERT INTO members VALUES (1, 'bidder'), (2, 'bidder');`

const skipConfig = `
source:
  dsn: set-by-test
events:
  - event: member.role_changed
    table: public.members
    operations: [update]
    changed: [role]
    data: [id, role]
  - event: item.created
    table: public.items
    operations: [insert]
    data: [id, n]
`

var skipToRe = regexp.MustCompile(`walhook setup --skip-to ([0-9A-F]+/[0-9A-F]+)`)

// The walkthrough's case: REPLICA IDENTITY DEFAULT set on a table whose
// rule reads old values, then an update. run stops at it, and again on
// every restart, FULL restored or not (the change was written without
// old values); its error names setup --skip-to with the
// transaction's end. Skipping to it loses that change's event and no
// other: the items inserted just before it and later changes of both
// tables arrive, each once.
func TestRunSkipsAnUnmappableTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, skipSchema)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(skipConfig), s)
	db.setup(t, cfg)

	p := startRunProc(t, "--config", file)
	db.exec(t, `UPDATE members SET role = 'admin' WHERE id = 1`)
	runWaitFor(t, 30*time.Second, "the first role change", func() bool { return rc.Unique() == 1 }, p.diag)

	// Made while walhook is stopped, they arrive together at its start:
	// the items before the stuck change come in its batch, and are stored
	// before run stops, so that skipping to its end skips it alone.
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	db.exec(t, `ALTER TABLE members REPLICA IDENTITY DEFAULT`)
	for i := 1; i <= 3; i++ {
		insertItems(t, db, i, i)
	}
	db.exec(t, `UPDATE members SET role = 'seller' WHERE id = 2`)
	// Restoring FULL gets run past its startup check, not past the
	// change: PostgreSQL decodes it as it was written.
	db.exec(t, `ALTER TABLE members REPLICA IDENTITY FULL`)
	p = startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	if err == nil || ExitCode(err) != 1 {
		t.Fatalf("run ended with %v (exit %d), want exit 1", err, ExitCode(err))
	}
	msg := err.Error()
	t.Logf("run stopped: %s", msg)
	for _, want := range []string{
		"mapping stopped replication: ",
		"public.members has REPLICA IDENTITY DEFAULT, which does not send them; run: ALTER TABLE public.members REPLICA IDENTITY FULL; ",
		"fixing the table lets the changes written after the fix through, but not this one: PostgreSQL wrote it without old values",
		"change the rule so it does not read old values, then restart; or, to skip this transaction's events, " +
			"stop every walhook on this store and run walhook setup --skip-to ",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("run's error lacks %q", want)
		}
	}
	m := skipToRe.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("run's error names no LSN to skip to")
	}
	skipTo, perr := pglogrepl.ParseLSN(m[1])
	if perr != nil {
		t.Fatal(perr)
	}

	// Every restart stops at the same transaction.
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, errOut, code := runCLI(t, rctx, "run", "--config", file)
	if code != 1 || !strings.Contains(errOut, "walhook setup --skip-to "+m[1]+" ") {
		t.Fatalf("run again: exit %d, want 1 naming --skip-to %s again; stderr:\n%s", code, m[1], runTail(errOut, 3000))
	}

	db.slotLSN(t) // once the walsender has let go
	cursor := db.cursor(t)
	if cursor >= skipTo {
		t.Fatalf("cursor %s at or past the stuck transaction's end %s", cursor, skipTo)
	}
	out, errOut, code := runCLI(t, ctx, "setup", "--config", file, "--skip-to", m[1])
	if code != 0 {
		t.Fatalf("setup --skip-to: exit %d\n%s%s", code, out, errOut)
	}
	if want := fmt.Sprintf("skipped the changes between %s and %s: they will not be mapped or delivered (the store's cursor for slot %s moved from %s to %s)\n",
		cursor, skipTo, db.slot, cursor, skipTo); out != want {
		t.Errorf("setup --skip-to printed %q, want %q", out, want)
	}
	if got := db.cursor(t); got != skipTo {
		t.Fatalf("cursor %s after setup --skip-to, want %s", got, skipTo)
	}

	p = startRunProc(t, "--config", file)
	db.exec(t, `UPDATE members SET role = 'owner' WHERE id = 1`)
	insertItems(t, db, 4, 5)
	runWaitFor(t, 30*time.Second, "the changes after the skipped one", func() bool { return rc.Unique() == 7 }, p.diag)
	time.Sleep(time.Second) // a late duplicate or the skipped change would show up here
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	perID := map[string]int{}
	var got []string
	for _, d := range rc.deliveries() {
		perID[d.ID]++
		body := runBody(t, d.Body)
		data, _ := body["data"].(map[string]any)
		got = append(got, fmt.Sprintf("%v %v %v", body["event"], data["id"], data["role"]))
	}
	for id, n := range perID {
		if n != 1 {
			t.Errorf("delivery %s sent %d times", id, n)
		}
	}
	want := map[string]bool{
		"member.role_changed 1 admin": true, "member.role_changed 1 owner": true, "item.created 1 <nil>": true,
		"item.created 2 <nil>": true, "item.created 3 <nil>": true, "item.created 4 <nil>": true, "item.created 5 <nil>": true,
	}
	if len(got) != len(want) {
		t.Errorf("delivered %q, want %d deliveries", got, len(want))
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("delivered %q, not one of the expected", g)
		}
	}
	if n := db.count(t, `SELECT count(*) FROM walhook.events WHERE type = 'member.role_changed' AND data->>'role' = 'seller'`); n != 0 {
		t.Errorf("%d events for the skipped change", n)
	}
}

// The position run's error names: a whole transaction's end; for a part
// of a large one whose commit has not arrived, one past its commit
// record's start (PostgreSQL skips a transaction whose commit record
// starts before the start position), saying that earlier parts stay.
func TestMapStopErrorNamesTheSkip(t *testing.T) {
	t.Parallel()
	cause := errors.New("map transaction 9: boom")
	for _, tc := range []struct {
		tx   cdc.Tx
		want string
	}{
		{cdc.Tx{CommitLSN: 0x100, EndLSN: 0x130, Final: true}, "walhook setup --skip-to 0/130 (docs/operations.md)"},
		{cdc.Tx{CommitLSN: 0x100, EndLSN: 0x130, Final: true, Chunk: 2},
			"walhook setup --skip-to 0/130; the events of its first 2 parts were stored already and stay (docs/operations.md)"},
		{cdc.Tx{CommitLSN: 0x100, Chunk: 1},
			"walhook setup --skip-to 0/101, just past its commit record at 0/100 (its end is not known yet); the events of its first part were"},
	} {
		err := mapStopError(&tc.tx, cause)
		if !errors.Is(err, cause) || !strings.Contains(err.Error(), "Fix the rule, then restart; or, to skip this transaction's events") ||
			!strings.Contains(err.Error(), tc.want) {
			t.Errorf("chunk %d final %v: %v\nwant it to contain %q", tc.tx.Chunk, tc.tx.Final, err, tc.want)
		}
	}
	// The transactions before it in its batch could not be stored: a skip
	// to its end would lose them too, so none is offered.
	tx := cdc.Tx{CommitLSN: 0x100, EndLSN: 0x130, Final: true}
	err := withUnstored(mapStopError(&tx, cause), errors.New("store: connection refused"))
	if !errors.Is(err, cause) || strings.Contains(err.Error(), "--skip-to 0/") ||
		!strings.Contains(err.Error(), "the transactions before it could not be stored (store: connection refused)") {
		t.Errorf("with the batch before it not stored: %v", err)
	}
	err = withUnstored(mapStopError(&tx, cause), nil)
	if !strings.Contains(err.Error(), "could not be stored (this process was stopping)") {
		t.Errorf("stopping: %v", err)
	}
}
