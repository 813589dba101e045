package cdc

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// A physical slot (a standby's) under walhook's slot name: Run stops at
// once and says so. It used to retry for ever on "cannot scan NULL into
// *bool" (a physical slot has no database).
func TestPhysicalSlotOfTheSameName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	exec(t, dsn, `SELECT pg_drop_replication_slot('`+slotFor(dsn)+`'); SELECT pg_create_physical_replication_slot('`+slotFor(dsn)+`')`)
	start := time.Now()
	b := startStream(t, dsn, 0, nil)
	err := b.runErr(t)
	wantErr(t, err, ErrSlotMissing)
	if !strings.Contains(err.Error(), "is a physical slot") || !strings.Contains(err.Error(), "choose another source.slot") {
		t.Fatalf("error does not say the slot is physical and what to do: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("Run took %v to give up on a physical slot", d)
	}
	if st, err := b.stream.Status(ctx); !strings.Contains(err.Error(), "is a physical slot") {
		t.Fatalf("status: %+v, %v", st, err)
	}
}
