package dispatch

import (
	"context"
	"errors"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// SkipCursor moves the cursor forward only: it refuses a store without a
// cursor and a position the cursor has reached, and a replayed Append of
// an older transaction afterwards leaves the skipped-to position.
func TestSkipCursor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, b := obSetup(t, nil)
	stored := func() cdc.LSN {
		t.Helper()
		lsn, system, ok, err := StoredCursor(ctx, b.pool, "walhook", "slot")
		if err != nil || !ok || system != "sys" {
			t.Fatalf("StoredCursor: %v, %v, ok %v", err, system, ok)
		}
		return lsn
	}

	if _, err := SkipCursor(ctx, b.pool, "walhook", "slot", 100); !errors.Is(err, ErrNoCursor) {
		t.Fatalf("SkipCursor without a cursor: %v, want ErrNoCursor", err)
	}

	obAppend(t, d, 50)
	for _, to := range []cdc.LSN{50, 40} {
		_, err := SkipCursor(ctx, b.pool, "walhook", "slot", to)
		var nb *CursorNotBehindError
		if !errors.As(err, &nb) || nb.Cursor != 50 {
			t.Fatalf("SkipCursor to %s with the cursor at 50: %v, want a CursorNotBehindError at 50", to, err)
		}
		if got := stored(); got != 50 {
			t.Fatalf("cursor %s after a refused skip, want 50", got)
		}
	}

	from, err := SkipCursor(ctx, b.pool, "walhook", "slot", 200)
	if err != nil || from != 50 {
		t.Fatalf("SkipCursor to 200: from %s, %v; want from 50", from, err)
	}
	if got := stored(); got != 200 {
		t.Fatalf("cursor %s after the skip, want 200", got)
	}
	// A walhook that stored up to 120 before it stopped replays it.
	obAppend(t, d, 120)
	if got := stored(); got != 200 {
		t.Fatalf("cursor %s after replaying an older transaction, want it to stay at 200", got)
	}
}
