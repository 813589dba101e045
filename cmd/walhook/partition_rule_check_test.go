package main

import (
	"strings"
	"testing"
)

// Rules on a partitioned table and on one of its partitions, before
// setup: check said only that the publication and slot were missing and
// ended "not ready: run walhook setup", and setup then refused the
// config. check now names the partition rule with its fix, as setup
// does, and does not send the integrator to setup alone.
func TestCheckPartitionRuleBeforeSetup(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, pubBidSchema)
	file, _ := runConfig(t, []byte(pubBidConfig+`  - event: bid.placed_odd
    table: public.bid_1
    operations: [insert]
    data: [id]
`), db.settings())
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out, `^FAIL  table public\.bid_1: is a partition of public\.bid, which the rules map too: .* rules on public\.bid_1 never fire, and walhook setup refuses them — fix: write the rules of public\.bid_1 on public\.bid \(a when: on the partition key selects its rows\)$`)
	ckNoLines(t, out, `not ready: run walhook setup`)
	if _, errOut, code := pubCLI(t, "setup", "--config", file); code != 1 || !strings.Contains(errOut, "public.bid_1 is a partition of public.bid") {
		t.Fatalf("setup exit %d, want 1 naming the partition", code)
	}
}
