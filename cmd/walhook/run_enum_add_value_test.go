package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// ALTER TYPE … ADD VALUE on an enum a rule compares, while walhook runs:
// rows with the new label map like any other (the label is text to the
// rules; walhook reads enum labels only to check when:'s strings at
// start and in the periodic check, and a label added keeps every
// compared string a label), and the 10 s check finds nothing wrong. A
// compared label renamed (ALTER TYPE … RENAME VALUE) stops the run within
// that check (TestRunEnumValueAddedWhileRunning).
func TestRunEnumValueAddedWhileRunning(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TYPE lot_state AS ENUM ('open', 'sold');
		CREATE TABLE lots (id int PRIMARY KEY, state lot_state NOT NULL);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: lot.closed
    table: public.lots
    operations: [insert]
    when: new.state != "open"
    data: [id, state]
  - event: lot.opened
    table: public.lots
    operations: [insert]
    when: new.state == "open"
    data: [id, state]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO lots VALUES (1, 'sold')`)
	runWaitFor(t, 30*time.Second, "lot 1", func() bool { return rc.Unique() == 1 }, p.diag)
	db.exec(t, `ALTER TYPE lot_state ADD VALUE 'withdrawn' BEFORE 'sold'`)
	db.exec(t, `INSERT INTO lots VALUES (2, 'withdrawn'), (3, 'open')`)
	runWaitFor(t, 30*time.Second, "lots 2 and 3", func() bool { return rc.Unique() == 3 }, p.diag)
	got := map[string]int{}
	for _, d := range rc.deliveries() {
		b := runBody(t, d.Body)
		data, _ := b["data"].(map[string]any)
		got[fmt.Sprint(b["event"], " ", data["id"], " ", data["state"])]++
	}
	want := map[string]int{"lot.closed 1 sold": 1, "lot.closed 2 withdrawn": 1, "lot.opened 3 open": 1}
	if !runCountsEqual(got, want) {
		t.Fatalf("deliveries %v, want %v", got, want)
	}
	time.Sleep(publicationPoll + time.Second)
	if err, done := p.exited(); done {
		t.Fatalf("run stopped: %v", err)
	}
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	if m := runMetrics(t, base); !strings.Contains(m, "\nwalhook_rule_table_problems 0\n") {
		t.Errorf("walhook_rule_table_problems is not 0 after the label was added")
	}

	// A label the rules compare renamed: lot.opened would never fire
	// again, and lot.closed would fire for every listed lot. The periodic
	// check stops the run (it only logged this, and walhook mapped on).
	db.exec(t, `ALTER TYPE lot_state RENAME VALUE 'open' TO 'listed'`)
	runWaitFor(t, 3*publicationPoll, "run to stop", func() bool { _, done := p.exited(); return done }, p.diag)
	err, _ := p.exited()
	const wantMsg = `event lot.opened: compares new.state with "open", which is not a value of its enum lot_state in public.lots ("listed", "withdrawn", "sold")`
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "the rules' when: no longer fit the rule tables' columns") ||
		!strings.Contains(err.Error(), wantMsg) || !strings.Contains(err.Error(), "walhook.yaml:15:13: events[1].when:") {
		t.Fatalf("run ended with %v (exit %d), want exit 1 naming the rules and the label", err, ExitCode(err))
	}
}
