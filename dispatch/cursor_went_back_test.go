package dispatch

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/mapper"
)

// A store restored from an older backup (or failed over to a standby that
// was behind) under a running walhook has its cursor behind what this
// process stored there, and lacks the events stored since. The next
// Append must not move that cursor forward past them (it never goes
// back, so the gap would be covered over for good and no start would
// see it): it refuses, stores nothing, and says what happened. Found by
// TestRunStopsWhenTheStoreIsRestoredFromAnOlderBackup (cmd/walhook),
// which lost the race this test makes certain: before, Append moved the
// restored cursor from 0/1000 to 0/3000.
func TestAppendRefusesACursorThatWentBack(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	b.endpoint(t, "whk_a", "https://a.example/hook", nil, nil, true)
	d.ExpectCursor("slot", 0) // a term that found no cursor
	obAppend(t, d, 0x1000, obEvent("a.b", ""))
	obAppend(t, d, 0x2000, obEvent("a.b", ""))

	// The store as a backup taken at 0/1000 has it.
	restore := func() {
		t.Helper()
		if _, err := b.pool.Exec(ctx, `UPDATE walhook.cursor SET lsn = '0/1000'`); err != nil {
			t.Fatal(err)
		}
	}
	restore()
	ev := obEvent("a.b", "")
	err := d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 9, CommitLSN: 0x2F00, EndLSN: 0x3000, Final: true, CommitTime: time.Now(),
		Events: []mapper.Event{ev}}})
	var cw *CursorWentBackError
	if !errors.As(err, &cw) || !errors.Is(err, ErrCursorWentBack) {
		t.Fatalf("Append over a cursor that went back: %v, want a CursorWentBackError", err)
	}
	if cw.Kept != 0x2000 || cw.Found != 0x1000 || cw.Missing {
		t.Errorf("error says kept %s found %s missing %v, want 0/2000, 0/1000, false", cw.Kept, cw.Found, cw.Missing)
	}
	for _, want := range []string{`slot "slot" is at 0/1000`, "0/2000", "restored from a backup", "Recovering from a gap"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if lsn, _, _, _ := d.Cursor(ctx, "slot"); lsn != 0x1000 {
		t.Errorf("cursor moved to %s, want it left at the restored 0/1000", lsn)
	}
	if n := b.count(t, `SELECT count(*) FROM walhook.events WHERE id = $1`, ev.ID); n != 0 {
		t.Errorf("the refused batch's event was stored")
	}

	// A store that lost the cursor row altogether (restored to before the
	// first append) is refused too.
	if _, err := b.pool.Exec(ctx, `DELETE FROM walhook.cursor`); err != nil {
		t.Fatal(err)
	}
	err = d.Append(ctx, "slot", "sys", []TxEvents{{Xid: 9, CommitLSN: 0x2F00, EndLSN: 0x3000, Final: true}})
	if !errors.As(err, &cw) || !cw.Missing || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("Append over a missing cursor: %v, want a CursorWentBackError saying it is gone", err)
	}

	// A new term that reads the cursor as it is now (ExpectCursor) goes on
	// from there; a cursor found past what this process knew (another
	// process led meanwhile) is fine.
	restore2 := `INSERT INTO walhook.cursor (slot, system_id, lsn) VALUES ('slot', 'sys', '0/1000')`
	if _, err := b.pool.Exec(ctx, restore2); err != nil {
		t.Fatal(err)
	}
	d.ExpectCursor("slot", 0x1000)
	obAppend(t, d, 0x1800)
	if _, err := b.pool.Exec(ctx, `UPDATE walhook.cursor SET lsn = '0/5000'`); err != nil {
		t.Fatal(err)
	}
	obAppend(t, d, 0x6000)
	if lsn, _, _, _ := d.Cursor(ctx, "slot"); lsn != 0x6000 {
		t.Errorf("cursor %s, want 0/6000", lsn)
	}
}
