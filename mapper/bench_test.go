package mapper

import (
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
)

// seedRels are the relations of testdata/auction-excellence/schema.sql as
// pgoutput announces them (columns in table order, key first).
func seedRels() map[string]*cdc.Relation {
	return map[string]*cdc.Relation{
		"auctions":           testRel(10, "public.auctions", 'd', "id", "name", "starts_at", "ends_at", "settings", "created_at"),
		"members":            testRel(11, "public.members", 'f', "id", "auction_id", "user_id", "email", "display_name", "role", "invited_by", "invited_at", "accepted_at", "removed_at", "removed_by"),
		"lot_submissions":    testRel(12, "public.lot_submissions", 'f', "id", "auction_id", "member_id", "lot_number", "item_count", "notes", "submitted_at", "updated_at"),
		"inspections":        testRel(13, "public.inspections", 'd', "id", "auction_id", "submission_id", "inspector_id", "grade", "notes", "inspected_at"),
		"inspection_defects": testRel(14, "public.inspection_defects", 'd', "id", "auction_id", "inspection_id", "kind", "severity", "description", "details", "created_at"),
		"problem_reports":    testRel(15, "public.problem_reports", 'f', "id", "auction_id", "reported_by", "title", "description", "priority", "status", "assignee_id", "created_at", "updated_at"),
		"problem_actions":    testRel(16, "public.problem_actions", 'f', "id", "auction_id", "problem_id", "description", "assignee_id", "due_at", "completed_at", "completed_by", "created_at"),
		"channels":           testRel(17, "public.channels", 'f', "id", "auction_id", "name", "topic", "created_by", "archived", "archived_at", "created_at"),
		"messages":           testRel(18, "public.messages", 'f', "id", "auction_id", "channel_id", "author_id", "body", "attachments", "created_at", "edited_at", "deleted_at"),
	}
}

const (
	uA = "0b7c6f3e-9a4d-4e57-8a0e-2f1d5c3b9a10"
	uB = "5d2f8a61-3c7e-4b19-9f4a-8e6d1c0b2a37"
	uC = "c91e4d27-6b3a-4f85-a2d9-7e0c5b8f1a64"
)

// benchMix is a realistic transaction mix of seed 000: 20 changes, 8 of
// them producing 9 events (chat and submissions dominate), the rest updates no rule
// fires on (timestamps touched, `SET status = status`, edits of other
// columns) and a table without rules.
func benchMix(rels map[string]*cdc.Relation) []cdc.Change {
	t0 := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	t1 := t0.Add(time.Minute)
	msg := func(body string, deleted any) map[string]any {
		return map[string]any{"id": uA, "auction_id": uB, "channel_id": uC, "author_id": uB, "body": body,
			"attachments": json.RawMessage(`[{"url":"https://x/y.png"}]`), "created_at": t0, "deleted_at": deleted}
	}
	sub := func(count int64, updated time.Time) map[string]any {
		return map[string]any{"id": uA, "auction_id": uB, "member_id": uC, "lot_number": int64(17), "item_count": count,
			"notes": "two boxes", "submitted_at": t0, "updated_at": updated}
	}
	prob := func(status string, assignee any, updated time.Time) map[string]any {
		return map[string]any{"id": uA, "auction_id": uB, "reported_by": uC, "title": "Lot 17 count mismatch",
			"description": "Counted 12, sheet says 14", "priority": "high", "status": status, "assignee_id": assignee,
			"created_at": t0, "updated_at": updated}
	}
	member := func(name string, accepted any) map[string]any {
		return map[string]any{"id": uA, "auction_id": uB, "user_id": uC, "email": "kim@example.com", "display_name": name,
			"role": "counter", "invited_by": uB, "invited_at": t0, "accepted_at": accepted}
	}
	action := func(due time.Time) map[string]any {
		return map[string]any{"id": uA, "auction_id": uB, "problem_id": uC, "description": "Recount", "due_at": due, "created_at": t0}
	}
	channel := func(topic string) map[string]any {
		return map[string]any{"id": uA, "auction_id": uB, "name": "floor", "topic": topic, "created_by": uC, "archived": false, "created_at": t0}
	}
	ins := func(rel string, v map[string]any) cdc.Change {
		return change(cdc.OpInsert, rels[rel], nil, v)
	}
	upd := func(rel string, o, n map[string]any) cdc.Change {
		return change(cdc.OpUpdate, rels[rel], o, n)
	}
	return []cdc.Change{
		ins("messages", msg("Lot 17 is short two items", nil)),                             // message.created
		ins("messages", msg("On it", nil)),                                                 // message.created
		upd("messages", msg("On it", nil), msg("On it now", nil)),                          // message.edited
		upd("messages", msg("x", nil), msg("x", nil)),                                      // nothing
		upd("messages", msg("x", nil), msg("x", t1)),                                       // message.deleted
		ins("lot_submissions", sub(12, t0)),                                                // submission.created
		upd("lot_submissions", sub(12, t0), sub(12, t1)),                                   // nothing: updated_at only
		upd("lot_submissions", sub(12, t0), sub(14, t1)),                                   // submission.updated
		upd("problem_reports", prob("open", nil, t0), prob("open", nil, t1)),               // nothing
		upd("problem_reports", prob("open", nil, t0), prob("open", nil, t0)),               // nothing: SET status = status
		upd("problem_reports", prob("open", nil, t0), prob("in_progress", uC, t1)),         // status_changed + assigned
		upd("members", member("Kim", t0), member("Kim L.", t0)),                            // nothing
		upd("members", member("Kim", nil), member("Kim", t1)),                              // member.joined
		upd("problem_actions", action(t0), action(t1)),                                     // nothing
		upd("channels", channel("a"), channel("b")),                                        // nothing
		upd("auctions", nil, map[string]any{"id": uA, "name": "Spring", "created_at": t0}), // no rules
		upd("problem_reports", prob("open", uC, t0), prob("open", uC, t1)),                 // nothing
		upd("lot_submissions", sub(12, t0), sub(12, t1)),                                   // nothing
		upd("members", member("Kim", t0), member("Kim", t0)),                               // nothing
		upd("messages", msg("y", nil), msg("y", nil)),                                      // nothing
	}
}

// nonMatching keeps only the changes no rule fires on.
func nonMatching(m *Mapper, changes []cdc.Change) []cdc.Change {
	var out []cdc.Change
	for _, c := range changes {
		if evs, err := m.Map(txOf(c)); err == nil && len(evs) == 0 {
			out = append(out, c)
		}
	}
	return out
}

func seedMapper(tb testing.TB) *Mapper {
	return CompileConfig(tb, "../testdata/auction-excellence/walhook.yaml",
		Options{SystemID: "7345678901234567890", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// BenchmarkMap maps the realistic mix with the 17 seed-000 rules.
func BenchmarkMap(b *testing.B) {
	m := seedMapper(b)
	tx := txOf(benchMix(seedRels())...)
	evs, err := m.Map(tx)
	if err != nil || len(evs) != 9 {
		b.Fatalf("mix produced %d events (%v), want 9", len(evs), err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := m.Map(tx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(tx.Changes))/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkMapNonMatching maps only changes no rule fires on: 0 allocs.
func BenchmarkMapNonMatching(b *testing.B) {
	m := seedMapper(b)
	tx := txOf(nonMatching(m, benchMix(seedRels()))...)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := m.Map(tx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(tx.Changes))/b.Elapsed().Seconds(), "changes/s")
}

// TestMapNonMatchingAllocatesNothing: a change no rule fires on — table
// without rules, operation not listed, changed columns equal, when false —
// costs no allocation (counted, not timed).
func TestMapNonMatchingAllocatesNothing(t *testing.T) {
	m := seedMapper(t)
	changes := nonMatching(m, benchMix(seedRels()))
	if len(changes) != 12 {
		t.Fatalf("%d non-matching changes in the mix, want 12", len(changes))
	}
	tx := txOf(changes...)
	if allocs := testing.AllocsPerRun(200, func() {
		if evs, err := m.Map(tx); err != nil || len(evs) != 0 {
			t.Fatalf("Map = %d events, %v", len(evs), err)
		}
	}); allocs != 0 {
		t.Fatalf("%v allocations per transaction of %d non-matching changes, want 0", allocs, len(changes))
	}
}
