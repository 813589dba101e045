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

// walhook teardown with a config whose slot name is a physical slot (the
// standby's that Run now names), or a logical slot of another database
// (another walhook's, on another database of the cluster: setup refused
// this config for it), dropped that slot: the standby or the other
// walhook lost its slot and the WAL it kept. Teardown now keeps a slot
// that is not a logical slot of this database, says so, and still drops
// the publication.
func TestTeardownKeepsASlotNotOfThisDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	shared := pgtest.Shared(t)
	dsn := shared.NewDatabase(t)
	other := shared.NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	slot := slotFor(dsn)
	exec(t, dsn, `SELECT pg_drop_replication_slot('`+slot+`'); SELECT pg_create_physical_replication_slot('`+slot+`')`)
	exec(t, other, `SELECT pg_create_logical_replication_slot('`+slot+`_b', 'pgoutput')`)
	for _, c := range []struct{ name, want string }{
		{slot, "is a physical slot"},
		{slot + "_b", "is a logical slot of database"},
	} {
		did, err := Teardown(ctx, dsn, c.name, "walhook", true)
		if err != nil {
			t.Fatalf("teardown of %s: %v", c.name, err)
		}
		var n int
		queryRow(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = '`+c.name+`'`, &n)
		if n != 1 {
			t.Fatalf("teardown dropped slot %s, which is not walhook's: %q", c.name, did)
		}
		if len(did) == 0 || !strings.HasPrefix(did[0], "warn: ") || !strings.Contains(did[0], c.want) || !strings.Contains(did[0], "kept") {
			t.Fatalf("teardown of %s does not say it kept the slot: %q", c.name, did)
		}
	}
	exec(t, dsn, `SELECT pg_drop_replication_slot('`+slot+`')`)
	exec(t, other, `SELECT pg_drop_replication_slot('`+slot+`_b')`)
}
