package main

import (
	"context"
	"testing"
)

// A partitioned rule table whose partition has a dot in its name (legal:
// "bid.2024"; it comes from pg_partition_tree, not from the rules, which
// name the partitioned table). setup --replica-identity, the fix check
// prints, sets FULL on it (it split the name again and failed with
// "want schema.table", before creating the slot).
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
