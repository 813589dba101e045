package mapper

import (
	"regexp"
	"testing"

	"github.com/walhook/walhook/cdc"
)

// Event and delivery ids grow with the commit LSN, so the store's
// B-trees on them (events, deliveries, attempts) take new entries at one
// end instead of on random pages: with random ids every index page
// touched first after a checkpoint was written to the WAL whole, 4× the
// WAL per delivery at 2,000,000 stored deliveries (docs/benchmarks.md).
func TestIDsGrowWithCommitLSN(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	sns := regexp.MustCompile(`^evt_[0-9a-f]{24}$`)
	lsns := []cdc.LSN{0x1F798D78, 0x1F798D79, 0x9F00_0000, 0x2_0000_0000, 0x2_0000_0001, 0xFF_1234_5678}
	var prevEv, prevAE, prevSNS string
	for i, lsn := range lsns {
		// A later transaction may have a smaller xid, position or rule.
		ev := EventID("7345", 0, uint32(1000-i), lsn, 100-i, 10-i)
		ae := DeliveryID(EnvelopeAuctionExcellence, ev, "static:ops")
		sn := DeliveryID(EnvelopeSNS, ev, "static:ops")
		if !uuid.MatchString(ae) || !sns.MatchString(sn) {
			t.Fatalf("delivery ids %q, %q: want a version-8 UUID and evt_ + 24 hex digits", ae, sn)
		}
		// An sns id holds the LSN's low 32 bits: ordered within 4 GiB of WAL.
		snsOrdered := i == 0 || lsn>>32 != lsns[i-1]>>32 || prevSNS < sn
		if i > 0 && !(prevEv < ev && prevAE < ae && snsOrdered) {
			t.Errorf("LSN %s after %s: ids %q, %q, %q do not sort after %q, %q, %q",
				lsn, lsns[i-1], ev, ae, sn, prevEv, prevAE, prevSNS)
		}
		prevEv, prevAE, prevSNS = ev, ae, sn
	}
	// Still distinct per change, rule, endpoint and epoch within one commit.
	seen := map[string]bool{}
	for _, id := range []string{
		EventID("7345", 0, 7, 0x1F798D78, 0, 0), EventID("7345", 0, 7, 0x1F798D78, 1, 0),
		EventID("7345", 0, 7, 0x1F798D78, 0, 1), EventID("7345", 1, 7, 0x1F798D78, 0, 0),
		DeliveryID(EnvelopeAuctionExcellence, EventID("7345", 0, 7, 0x1F798D78, 0, 0), "a"),
		DeliveryID(EnvelopeAuctionExcellence, EventID("7345", 0, 7, 0x1F798D78, 0, 0), "b"),
	} {
		if seen[id] {
			t.Errorf("id %q given twice", id)
		}
		seen[id] = true
	}
}

// A transaction an older walhook stored in part (a transaction of more
// than one chunk, stopped half-way) is replayed under the ids it was
// stored with, deliveries included; every other one gets ordered ids.
func TestLegacyIDsForAHalfStoredTransaction(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{SystemID: "7345"},
		Rule{Event: "problem.touched", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}})
	mk := func(xid uint32, lsn cdc.LSN) *cdc.Tx {
		tx := txOf(change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": "a"}, map[string]any{"id": "p1", "status": "b"}))
		tx.Xid, tx.CommitLSN = xid, lsn
		return tx
	}
	m.SetLegacyIDs(0x5000)
	a, _ := m.Map(mk(41, 0x5000))
	b, _ := m.Map(mk(42, 0x6000))
	if len(a) != 1 || len(b) != 1 {
		t.Fatalf("got %d and %d events, want 1 each", len(a), len(b))
	}
	if want := legacyEventID("7345", 0, 41, 0x5000, 0, 0); a[0].ID != want {
		t.Errorf("half-stored transaction: id %q, want the unordered %q", a[0].ID, want)
	}
	if want := EventID("7345", 0, 42, 0x6000, 0, 0); b[0].ID != want {
		t.Errorf("next transaction: id %q, want the ordered %q", b[0].ID, want)
	}
	for _, env := range []Envelope{EnvelopeAuctionExcellence, EnvelopeSNS} {
		if got, want := DeliveryID(env, a[0].ID, "e"), legacyDeliveryID(env, a[0].ID, "e"); got != want {
			t.Errorf("%s delivery of the half-stored transaction's event: %q, want the unordered %q", env, got, want)
		}
	}
	m.SetLegacyIDs(0)
	if c, _ := m.Map(mk(41, 0x5000)); c[0].ID != EventID("7345", 0, 41, 0x5000, 0, 0) {
		t.Errorf("without a half-stored transaction: id %q, want ordered", c[0].ID)
	}
}
