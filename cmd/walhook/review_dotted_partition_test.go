package main

import (
	"context"
	"testing"
)

// A partitioned rule table whose partition has a dot in its name (legal:
// "bid.2024"). check prints the right fix (ALTER TABLE public."bid.2024"
// … or walhook setup --replica-identity), but setup --replica-identity
// fails on the partition's name ("table \"public.bid.2024\": want
// schema.table"), exits 1 and stops before it creates the slot: the
// partition's identity stays DEFAULT and walhook cannot be set up with
// the command check recommends. The partition's name is not the rules'
// (they name the partitioned table); it comes from pg_partition_tree.
func TestSetupReplicaIdentityOnAPartitionWithADotInItsName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := newRunDB(t, `CREATE TABLE bid (id int, placed date, amount numeric, PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);
		CREATE TABLE "bid.2024" PARTITION OF bid FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');`)
	file, _ := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: bid.raised
    table: bid
    operations: [update]
    changed: [amount]
`), db.settings())
	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	ckWantLines(t, out, `FAIL  rule: .* fix: ALTER TABLE public.bid REPLICA IDENTITY FULL; ALTER TABLE public."bid.2024" REPLICA IDENTITY FULL; \(or walhook setup --replica-identity\)`)
	if code != 1 {
		t.Fatalf("check before setup: exit %d\n%s%s", code, out, errOut)
	}

	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--replica-identity")
	if code != 0 {
		t.Errorf("setup --replica-identity: exit %d, want 0\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCLI(t, ctx, "check", "--config", file)
	if code != 0 {
		t.Errorf("check after setup --replica-identity: exit %d, want 0\n%s%s", code, out, errOut)
	}
}
