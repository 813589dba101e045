package dispatch

import (
	"context"
	"testing"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

// A transaction an older walhook stored in part, under unordered ids, is
// found at the start of a term so that its replay keeps those ids; a
// transaction stored whole, one stored under ordered ids, or a store
// without events names none.
func TestHalfStoredLegacyTx(t *testing.T) {
	t.Parallel()
	d, b := obSetup(t, nil)
	ctx := context.Background()
	half := func() cdc.LSN {
		t.Helper()
		lsn, err := d.HalfStoredLegacyTx(ctx, "s1")
		if err != nil {
			t.Fatal(err)
		}
		return lsn
	}
	event := func(id, lsn string, age string) {
		t.Helper()
		if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.events (id, type, envelope, occurred_at, data, commit_lsn, created_at)
			VALUES ($1, 'a.b', 'auction-excellence', now(), '{}', $2::pg_lsn, now() - $3::interval)`, id, lsn, age); err != nil {
			t.Fatal(err)
		}
	}
	if got := half(); got != 0 {
		t.Fatalf("empty store: %s, want none", got)
	}
	// No cursor yet: the first transaction ever, stored in part.
	event("0123456789abcdef0123456789abcdef", "0/5000", "2 minutes")
	if got := half(); got != 0x5000 {
		t.Fatalf("first transaction stored in part, no cursor: %s, want 0/5000", got)
	}
	// The cursor past it: stored whole.
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.cursor (slot, system_id, lsn) VALUES ('s1', '7345', '0/5100')`); err != nil {
		t.Fatal(err)
	}
	if got := half(); got != 0 {
		t.Fatalf("transaction stored whole: %s, want none", got)
	}
	// A later one at the cursor, stored in part (its first chunk); a test
	// send after it has no commit position and does not count.
	event("fedcba9876543210fedcba9876543210", "0/5100", "1 minute")
	if _, err := b.pool.Exec(ctx, `INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
		VALUES ('test:x', 'a.b', 'auction-excellence', now(), '{}')`); err != nil {
		t.Fatal(err)
	}
	if got := half(); got != 0x5100 {
		t.Fatalf("transaction at the cursor stored in part: %s, want 0/5100", got)
	}
	// Stored in part under ordered ids (by this walhook): nothing to keep.
	event(mapper.EventID("7345", 0, 9, 0x5200, 0, 0), "0/5200", "0 seconds")
	if got := half(); got != 0 {
		t.Fatalf("transaction stored in part under ordered ids: %s, want none", got)
	}
}
