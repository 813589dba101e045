package mapper

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
)

// unavailable marks an unchanged TOAST value in test rows; absent a column
// pgoutput did not send.
type marker int

const (
	unavailable marker = iota + 1
	absent
)

var commitTime = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// testRel builds a relation; the first column is the key.
func testRel(oid uint32, table string, identity byte, cols ...string) *cdc.Relation {
	schema, name := splitTable(table)
	r := &cdc.Relation{OID: oid, Schema: schema, Name: name, ReplicaIdentity: identity}
	for i, c := range cols {
		r.Columns = append(r.Columns, cdc.Column{Name: c, Key: i == 0})
	}
	return r
}

// row builds a row of rel from column values; missing columns are Null.
func row(rel *cdc.Relation, vals map[string]any) []cdc.Value {
	if vals == nil {
		return nil
	}
	out := make([]cdc.Value, len(rel.Columns))
	for i, c := range rel.Columns {
		v, ok := vals[c.Name]
		switch {
		case !ok || v == nil:
			out[i] = cdc.Value{State: cdc.Null}
		case v == unavailable:
			out[i] = cdc.Value{State: cdc.Unavailable}
		case v == absent:
			out[i] = cdc.Value{State: cdc.Absent}
		default:
			out[i] = cdc.Value{V: v}
		}
	}
	return out
}

func change(op cdc.Op, rel *cdc.Relation, old, new map[string]any) cdc.Change {
	return cdc.Change{Op: op, Rel: rel, Old: row(rel, old), New: row(rel, new)}
}

func txOf(changes ...cdc.Change) *cdc.Tx {
	for i := range changes {
		changes[i].Position = i
	}
	return &cdc.Tx{Xid: 731, CommitLSN: 0x16B3748, CommitTime: commitTime, Changes: changes, Final: true}
}

func mustCompile(t testing.TB, opts Options, rules ...Rule) *Mapper {
	t.Helper()
	for i := range rules {
		if rules[i].Where == "" {
			rules[i].Where = "test.yaml: events[" + string(rune('0'+i)) + "]"
		}
	}
	m, err := Compile(rules, opts)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return m
}

// summary renders events as "type auction data" lines for comparison.
func summary(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		b.WriteString(e.Type)
		b.WriteString(" ")
		b.WriteString(e.AuctionID)
		if e.Domain != "" {
			b.WriteString(" " + e.Domain)
		}
		b.WriteString(" ")
		b.Write(e.Data)
		b.WriteString("\n")
	}
	return b.String()
}

var (
	problems = testRel(1, "public.problem_reports", 'f', "id", "auction_id", "title", "status", "assignee_id", "score", "updated_at")
	messages = testRel(2, "public.messages", 'f', "id", "auction_id", "body", "deleted_at")
	members  = testRel(3, "members", 'f', "id", "auction_id", "email", "role", "accepted_at")
	snsAucs  = testRel(4, "public.auctions", 'f', "id", "domain", "status", "winner", "final_price", "reserve_price")
	plain    = testRel(5, "public.plain", 'd', "id", "auction_id", "body")
)

func TestMapRuleKinds(t *testing.T) {
	t.Parallel()
	ts := commitTime
	type tc struct {
		name  string
		opts  Options
		rules []Rule
		tx    *cdc.Tx
		want  string
	}
	tests := []tc{
		{
			name:  "insert, whole row by default",
			rules: []Rule{{Event: "problem.created", Table: "public.problem_reports", Ops: []cdc.Op{cdc.OpInsert}}},
			tx: txOf(change(cdc.OpInsert, problems, nil, map[string]any{
				"id": "p1", "auction_id": "a1", "title": `Broken "lot" <7>`, "status": "open", "score": json.Number("1.50"), "updated_at": ts})),
			want: `problem.created a1 {"id":"p1","auction_id":"a1","title":"Broken \"lot\" <7>","status":"open","assignee_id":null,"score":1.50,"updated_at":"2024-05-06T07:08:09.123Z"}` + "\n",
		},
		{
			name: "changed fires on a changed value only",
			rules: []Rule{{Event: "problem.status_changed", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"},
				Data: []DataField{{Key: "id", Column: "id"}, {Key: "previous_status", Column: "status", From: "old"}, {Key: "status", Column: "status", From: "new"}}}},
			tx: txOf(
				change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": "open"}, map[string]any{"id": "p1", "status": "closed"}),
				// SET status = status: no change.
				change(cdc.OpUpdate, problems, map[string]any{"id": "p2", "status": "open"}, map[string]any{"id": "p2", "status": "open"}),
				// another column changed: no change of status.
				change(cdc.OpUpdate, problems, map[string]any{"id": "p3", "status": "open", "title": "a"}, map[string]any{"id": "p3", "status": "open", "title": "b"}),
				// null → value is a change.
				change(cdc.OpUpdate, problems, map[string]any{"id": "p4", "status": nil}, map[string]any{"id": "p4", "status": "open"}),
			),
			want: `problem.status_changed  {"id":"p1","previous_status":"open","status":"closed"}` + "\n" +
				`problem.status_changed  {"id":"p4","previous_status":null,"status":"open"}` + "\n",
		},
		{
			name:  "changed compares numerics by value",
			rules: []Rule{{Event: "problem.rescored", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"score"}, Data: []DataField{{Key: "id", Column: "id"}}}},
			tx: txOf(
				change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "score": json.Number("1.0")}, map[string]any{"id": "p1", "score": json.Number("1.00")}),
				change(cdc.OpUpdate, problems, map[string]any{"id": "p2", "score": json.Number("1.0")}, map[string]any{"id": "p2", "score": json.Number("1.01")}),
			),
			want: `problem.rescored  {"id":"p2"}` + "\n",
		},
		{
			name: "when: soft delete",
			rules: []Rule{{Event: "message.deleted", Table: "messages", Ops: []cdc.Op{cdc.OpUpdate},
				When: "old.deleted_at == nil && new.deleted_at != nil", Data: []DataField{{Key: "id", Column: "id"}, {Key: "deleted_at", Column: "deleted_at"}}}},
			tx: txOf(
				change(cdc.OpUpdate, messages, map[string]any{"id": "m1", "deleted_at": nil}, map[string]any{"id": "m1", "deleted_at": ts}),
				change(cdc.OpUpdate, messages, map[string]any{"id": "m2", "deleted_at": ts}, map[string]any{"id": "m2", "deleted_at": ts}),
				change(cdc.OpUpdate, messages, map[string]any{"id": "m3", "body": "a"}, map[string]any{"id": "m3", "body": "b"}),
			),
			want: `message.deleted  {"id":"m1","deleted_at":"2024-05-06T07:08:09.123Z"}` + "\n",
		},
		{
			name: "when: invitation accepted, renamed column",
			rules: []Rule{{Event: "member.joined", Table: "public.members", Ops: []cdc.Op{cdc.OpUpdate},
				When: "old.accepted_at == nil && new.accepted_at != nil", Data: []DataField{{Key: "email", Column: "email"}, {Key: "joined_at", Column: "accepted_at", From: "new"}}}},
			tx: txOf(
				change(cdc.OpUpdate, members, map[string]any{"id": "u1", "auction_id": "a1", "email": "x@y"}, map[string]any{"id": "u1", "auction_id": "a1", "email": "x@y", "accepted_at": ts}),
				change(cdc.OpUpdate, members, map[string]any{"id": "u1", "auction_id": "a1", "email": "x@y", "accepted_at": ts}, map[string]any{"id": "u1", "auction_id": "a1", "email": "z@y", "accepted_at": ts}),
			),
			want: `member.joined a1 {"email":"x@y","joined_at":"2024-05-06T07:08:09.123Z"}` + "\n",
		},
		{
			name: "when: reserve met or not, numeric comparison, sns envelope and domain",
			opts: Options{Envelope: EnvelopeSNS},
			rules: []Rule{
				{Event: "auction.settled", Table: "auctions", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}, AuctionID: "id", Domain: "domain",
					When: `new.status == "settled" && new.winner != nil && new.final_price >= new.reserve_price`,
					Data: []DataField{{Key: "winner", Column: "winner"}, {Key: "finalPrice", Column: "final_price"}}},
				{Event: "auction.settled_unsold", Table: "auctions", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}, AuctionID: "id", Domain: "domain",
					When: `new.status == "settled" && (new.winner == nil || new.final_price == nil || new.final_price < new.reserve_price)`,
					Data: []DataField{{Key: "highestBid", Column: "final_price"}}},
			},
			tx: txOf(
				// 10 < 9.5 lexically, but not numerically.
				change(cdc.OpUpdate, snsAucs, map[string]any{"id": "x1", "domain": "a.sol", "status": "active", "reserve_price": json.Number("9.5")},
					map[string]any{"id": "x1", "domain": "a.sol", "status": "settled", "winner": "W", "final_price": json.Number("10"), "reserve_price": json.Number("9.5")}),
				change(cdc.OpUpdate, snsAucs, map[string]any{"id": "x2", "domain": "b.sol", "status": "active", "reserve_price": json.Number("20")},
					map[string]any{"id": "x2", "domain": "b.sol", "status": "settled", "final_price": json.Number("10"), "reserve_price": json.Number("20")}),
			),
			want: `auction.settled x1 a.sol {"winner":"W","finalPrice":10}` + "\n" +
				`auction.settled_unsold x2 b.sol {"highestBid":10}` + "\n",
		},
		{
			name: "const data and the domain from options",
			opts: Options{Envelope: EnvelopeSNS, Domain: "fixed.sol"},
			rules: []Rule{{Event: "auction.noted", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, AuctionID: "new.id",
				Data: []DataField{{Key: "source", IsConst: true, Const: "walhook"}, {Key: "n", IsConst: true, Const: 3}, {Key: "tags", IsConst: true, Const: []any{"a", true}}}}},
			tx:   txOf(change(cdc.OpInsert, snsAucs, nil, map[string]any{"id": "x9", "domain": "row.sol"})),
			want: `auction.noted x9 fixed.sol {"source":"walhook","n":3,"tags":["a",true]}` + "\n",
		},
		{
			name: "delete reads the old row by default",
			rules: []Rule{{Event: "member.removed", Table: "members", Ops: []cdc.Op{cdc.OpDelete}, When: "old.accepted_at != nil",
				Data: []DataField{{Key: "id", Column: "id"}, {Key: "email", Column: "email"}}}},
			tx: txOf(
				change(cdc.OpDelete, members, map[string]any{"id": "u1", "auction_id": "a1", "email": "x@y", "accepted_at": ts}, nil),
				change(cdc.OpDelete, members, map[string]any{"id": "u2", "auction_id": "a1", "email": "v@y"}, nil),
			),
			want: `member.removed a1 {"id":"u1","email":"x@y"}` + "\n",
		},
		{
			name: "several events per change, in rule order; op filter",
			rules: []Rule{
				{Event: "problem.assigned", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"assignee_id"}, When: "new.assignee_id != nil", Data: []DataField{{Key: "to", Column: "assignee_id"}}},
				{Event: "problem.created", Table: "problem_reports", Ops: []cdc.Op{cdc.OpInsert}, Data: []DataField{{Key: "id", Column: "id"}}},
				{Event: "problem.status_changed", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}, Data: []DataField{{Key: "status", Column: "status"}}},
			},
			tx: txOf(
				change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": "open"}, map[string]any{"id": "p1", "status": "closed", "assignee_id": "u7"}),
				change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": "closed", "assignee_id": "u7"}, map[string]any{"id": "p1", "status": "closed"}),
			),
			want: `problem.assigned  {"to":"u7"}` + "\n" + `problem.status_changed  {"status":"closed"}` + "\n",
		},
		{
			name:  "truncates and messages produce nothing",
			rules: []Rule{{Event: "problem.created", Table: "problem_reports", Ops: []cdc.Op{cdc.OpInsert}}},
			tx: txOf(cdc.Change{Op: cdc.OpTruncate, Rel: problems, Rels: []*cdc.Relation{problems}},
				cdc.Change{Op: cdc.OpMessage, Prefix: "x", Content: []byte("y")}),
			want: ``,
		},
		{
			name:  "tables without rules produce nothing",
			rules: []Rule{{Event: "problem.created", Table: "problem_reports", Ops: []cdc.Op{cdc.OpInsert}}},
			tx:    txOf(change(cdc.OpInsert, messages, nil, map[string]any{"id": "m"})),
			want:  ``,
		},
		{
			name: "when reads op and the whole row",
			rules: []Rule{{Event: "message.touched", Table: "messages", Ops: []cdc.Op{cdc.OpInsert, cdc.OpUpdate},
				When: `op == "insert" ? new["body"] != "" : old == nil || old.body != new.body`, Data: []DataField{{Key: "id", Column: "id"}}}},
			tx: txOf(
				change(cdc.OpInsert, messages, nil, map[string]any{"id": "m1", "body": "x"}),
				change(cdc.OpInsert, messages, nil, map[string]any{"id": "m2", "body": ""}),
				change(cdc.OpUpdate, messages, map[string]any{"id": "m1", "body": "x"}, map[string]any{"id": "m1", "body": "x"}),
				change(cdc.OpUpdate, messages, map[string]any{"id": "m1", "body": "x"}, map[string]any{"id": "m1", "body": "y"}),
			),
			want: `message.touched  {"id":"m1"}` + "\n" + `message.touched  {"id":"m1"}` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := mustCompile(t, tt.opts, tt.rules...)
			evs, err := m.Map(tt.tx)
			if err != nil {
				t.Fatal(err)
			}
			if got := summary(evs); got != tt.want {
				t.Fatalf("events:\n%s\nwant:\n%s", got, tt.want)
			}
			for _, e := range evs {
				if !e.OccurredAt.Equal(commitTime) || e.ID == "" {
					t.Fatalf("event %+v: wrong time or no id", e)
				}
				if !json.Valid(e.Data) || !json.Valid(e.Body("d")) {
					t.Fatalf("invalid JSON: %s", e.Body("d"))
				}
			}
		})
	}
}

func TestMapEventIDsDeterministic(t *testing.T) {
	t.Parallel()
	rules := []Rule{
		{Event: "problem.status_changed", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}},
		{Event: "problem.touched", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}},
	}
	mk := func() *cdc.Tx {
		return txOf(
			change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": "a"}, map[string]any{"id": "p1", "status": "b"}),
			change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": "b"}, map[string]any{"id": "p1", "status": "c"}),
		)
	}
	m1 := mustCompile(t, Options{SystemID: "7345"}, rules...)
	m2 := mustCompile(t, Options{SystemID: "7345"}, rules...)
	other := mustCompile(t, Options{SystemID: "9999"}, rules...)
	a, _ := m1.Map(mk())
	b, _ := m2.Map(mk())
	c, _ := other.Map(mk())
	if len(a) != 4 {
		t.Fatalf("got %d events, want 4", len(a))
	}
	seen := map[string]bool{}
	for i := range a {
		if a[i].ID != b[i].ID {
			t.Fatalf("replay changed id %d: %s vs %s", i, a[i].ID, b[i].ID)
		}
		if a[i].ID == c[i].ID {
			t.Fatalf("id %d does not depend on the system id", i)
		}
		if seen[a[i].ID] {
			t.Fatalf("id %s repeats", a[i].ID)
		}
		seen[a[i].ID] = true
		if a[i].Position != i/2 || a[i].Rule != i%2 || a[i].Table != "public.problem_reports" {
			t.Fatalf("provenance of %d = %+v", i, a[i])
		}
	}
	tx := mk()
	tx.CommitLSN++
	d, _ := m1.Map(tx)
	if d[0].ID == a[0].ID {
		t.Fatal("id does not depend on the commit LSN")
	}
	tx = mk()
	tx.Xid++
	d, _ = m1.Map(tx)
	if d[0].ID == a[0].ID {
		t.Fatal("id does not depend on the xid")
	}
	// After an accepted fork the store's id epoch is counted up: the same
	// xid, commit LSN and position make another id. Epoch 0 is the id as
	// it was before epochs existed.
	tx = mk()
	if got := EventID("7345", 0, tx.Xid, tx.CommitLSN, 0, 0); got != a[0].ID {
		t.Fatalf("EventID(epoch 0) = %s, Map gave %s", got, a[0].ID)
	}
	m1.SetIDEpoch(1, 0)
	e1, _ := m1.Map(mk())
	m1.SetIDEpoch(2, 0)
	e2, _ := m1.Map(mk())
	for i := range a {
		if e1[i].ID == a[i].ID || e2[i].ID == a[i].ID || e1[i].ID == e2[i].ID {
			t.Fatalf("id %d does not depend on the epoch: %s, %s, %s", i, a[i].ID, e1[i].ID, e2[i].ID)
		}
	}
	if got := EventID("7345", 1, tx.Xid, tx.CommitLSN, 1, 1); got != e1[3].ID {
		t.Fatalf("EventID(epoch 1) = %s, Map gave %s", got, e1[3].ID)
	}
	// A transaction committed before where the epoch applies (the two
	// histories share it) keeps the id of the epoch before.
	m1.SetIDEpoch(1, tx.CommitLSN+1)
	if shared, _ := m1.Map(mk()); shared[0].ID != a[0].ID {
		t.Fatalf("a transaction before the epoch's start got %s, want its epoch-0 id %s", shared[0].ID, a[0].ID)
	}
	m1.SetIDEpoch(2, tx.CommitLSN+1)
	if shared, _ := m1.Map(mk()); shared[0].ID != e1[0].ID {
		t.Fatalf("a transaction before epoch 2's start got %s, want its epoch-1 id %s", shared[0].ID, e1[0].ID)
	}
	m1.SetIDEpoch(1, tx.CommitLSN)
	if at, _ := m1.Map(mk()); at[0].ID != e1[0].ID {
		t.Fatalf("a transaction at the epoch's start got %s, want its epoch-1 id %s", at[0].ID, e1[0].ID)
	}
}

func TestMapUnavailableToastSkipsEvent(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	m := mustCompile(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		Rule{Event: "message.edited", Table: "plain", Ops: []cdc.Op{cdc.OpUpdate}, Data: []DataField{{Key: "id", Column: "id"}, {Key: "body", Column: "body"}}},
		Rule{Event: "message.touched", Table: "plain", Ops: []cdc.Op{cdc.OpUpdate}, Data: []DataField{{Key: "id", Column: "id"}}},
		Rule{Event: "message.when", Table: "plain", Ops: []cdc.Op{cdc.OpUpdate}, When: `new.body != ""`, Data: []DataField{{Key: "id", Column: "id"}}},
	)
	evs, err := m.Map(txOf(change(cdc.OpUpdate, plain, nil, map[string]any{"id": int64(42), "auction_id": "a1", "body": unavailable})))
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(evs); got != `message.touched a1 {"id":42}`+"\n" {
		t.Fatalf("events = %s", got)
	}
	if s := m.Stats(); s.SkippedUnavailable != 2 || s.Events != 1 || s.Changes != 1 {
		t.Fatalf("stats = %+v", s)
	}
	for _, want := range []string{"table=public.plain", `key="id=42"`, "column=body", "event=message.edited", "event=message.when"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

func TestMapUpdateWithoutOldRowIsAnError(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{}, Rule{Event: "problem.status_changed", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}, Where: "w.yaml:3:5: events[0]"})
	_, err := m.Map(txOf(change(cdc.OpUpdate, problems, nil, map[string]any{"id": "p1", "status": "closed"})))
	want := "map transaction 731 (commit 0/16B3748), change 0 (update on public.problem_reports): w.yaml:3:5: events[0]: event problem.status_changed: update of public.problem_reports arrived without the old row, which this rule reads; run: ALTER TABLE public.problem_reports REPLICA IDENTITY FULL;"
	if err == nil || err.Error() != want || !errors.Is(err, ErrNeedsOldValues) {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	// A key-only old row lacks the compared column: also an error.
	_, err = m.Map(txOf(change(cdc.OpUpdate, problems, map[string]any{"id": "p1", "status": absent}, map[string]any{"id": "p1", "status": "closed"})))
	if !errors.Is(err, ErrNeedsOldValues) || !strings.Contains(err.Error(), "without the old value of status") {
		t.Fatalf("key-only old row: err = %v", err)
	}
}

func TestMapRelationChanged(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{}, Rule{Event: "problem.status_changed", Table: "problem_reports", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"status"}, Where: "w.yaml:3:5: events[0]"})
	old := map[string]any{"id": "p1", "status": "a"}
	if _, err := m.Map(txOf(change(cdc.OpUpdate, problems, old, map[string]any{"id": "p1", "status": "b"}))); err != nil {
		t.Fatal(err)
	}
	// The same table announced again (DDL): status dropped.
	dropped := testRel(1, "public.problem_reports", 'f', "id", "title")
	_, err := m.Map(txOf(change(cdc.OpUpdate, dropped, map[string]any{"id": "p1"}, map[string]any{"id": "p1"})))
	want := `map transaction 731 (commit 0/16B3748), change 0 (update on public.problem_reports): relation public.problem_reports as announced by the server: w.yaml:3:5: events[0].changed: event problem.status_changed: column "status" does not exist in public.problem_reports`
	if err == nil || err.Error() != want || !errors.Is(err, ErrUnknownColumn) {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	// Identity switched to DEFAULT.
	def := testRel(1, "public.problem_reports", 'd', "id", "status")
	_, err = m.Map(txOf(change(cdc.OpUpdate, def, nil, map[string]any{"id": "p1", "status": "b"})))
	if !errors.Is(err, ErrNeedsOldValues) || !strings.Contains(err.Error(), "ALTER TABLE public.problem_reports REPLICA IDENTITY FULL;") {
		t.Fatalf("DEFAULT identity: err = %v", err)
	}
}

func TestMapEvaluationError(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{}, Rule{Event: "x.y", Table: "messages", Ops: []cdc.Op{cdc.OpInsert}, When: `new.body + 1 > 2`})
	_, err := m.Map(txOf(change(cdc.OpInsert, messages, nil, map[string]any{"id": "m", "body": "text"})))
	if !errors.Is(err, ErrEvaluation) || !strings.Contains(err.Error(), "when: event x.y: new.body + 1 > 2 on public.messages") {
		t.Fatalf("err = %v", err)
	}
}

// A when that fails on a NULL is unknown, as in SQL: no event and no
// error, so a row with a NULL never halts replication. On non-NULL values
// the same expression still matches or not, and explain says why.
func TestMapWhenOnNullIsUnknown(t *testing.T) {
	t.Parallel()
	lots := testRel(7, "public.lots", 'f', "id", "final_price", "reserve_price", "archived")
	m := mustCompile(t, Options{},
		Rule{Event: "lot.sold", Table: "lots", Ops: []cdc.Op{cdc.OpUpdate, cdc.OpInsert}, When: `new.final_price >= new.reserve_price`},
		Rule{Event: "lot.live", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}, When: `!new.archived`},
		Rule{Event: "lot.raised", Table: "lots", Ops: []cdc.Op{cdc.OpInsert, cdc.OpUpdate}, When: `new.reserve_price > old.reserve_price`},
	)
	for _, tc := range []struct {
		name string
		ch   cdc.Change
		want []string
	}{
		{"reserve NULL", change(cdc.OpInsert, lots, nil, map[string]any{"id": "l1", "final_price": 10.0, "archived": false}), []string{"lot.live"}},
		{"archived NULL", change(cdc.OpInsert, lots, nil, map[string]any{"id": "l2", "final_price": 10.0, "reserve_price": 5.0}), []string{"lot.sold"}},
		{"old of an insert", change(cdc.OpInsert, lots, nil, map[string]any{"id": "l3", "final_price": 1.0, "reserve_price": 5.0, "archived": true}), nil},
		{"all present", change(cdc.OpUpdate, lots, map[string]any{"id": "l4", "reserve_price": 1.0}, map[string]any{"id": "l4", "final_price": 10.0, "reserve_price": 5.0, "archived": true}), []string{"lot.sold", "lot.raised"}},
	} {
		evs, err := m.Map(txOf(tc.ch))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var got []string
		for _, e := range evs {
			got = append(got, e.Type)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: events %v, want %v", tc.name, got, tc.want)
		}
	}
	if st := m.Stats(); st.WhenUnknown != 5 {
		t.Errorf("Stats().WhenUnknown = %d, want 5 (one per rule evaluated on a NULL)", st.WhenUnknown)
	}
	// A NULL elsewhere does not hide a rule's own type error.
	bad := mustCompile(t, Options{}, Rule{Event: "lot.bad", Table: "lots", Ops: []cdc.Op{cdc.OpInsert},
		When: `new.final_price > "5" && new.archived == nil`})
	if _, err := bad.Map(txOf(change(cdc.OpInsert, lots, nil, map[string]any{"id": "l9", "final_price": 10.0}))); !errors.Is(err, ErrEvaluation) {
		t.Errorf("a type error beside a NULL: err = %v, want the evaluation error", err)
	}
	x := m.Explain(txOf(change(cdc.OpInsert, lots, nil, map[string]any{"id": "l1", "final_price": 10.0})), 0)
	if r := x.Rules[0]; r.Matched || r.Err != nil || !strings.Contains(r.Reason, "when is unknown (it reads a NULL, as in SQL: not matched): new.final_price >= new.reserve_price (new.final_price=10, new.reserve_price=null)") {
		t.Errorf("explain: %+v", r)
	}
}

// A json key that is missing or null is nil in when:, like a NULL column:
// a failure on it is unknown, not a halt. cdc hands json and jsonb over as
// the raw document (json.RawMessage), so these rows are what it decodes
// from jsonb '{}' and '{"amount": null}'.
func TestMapWhenOnJSONNullIsUnknown(t *testing.T) {
	t.Parallel()
	bids := testRel(10, "public.bids", 'f', "id", "title", "details")
	m := mustCompile(t, Options{},
		Rule{Event: "bid.big", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.amount > 100`},
		Rule{Event: "bid.deep", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.card.brand == "visa" || new.details.card.last4 > 0`},
		Rule{Event: "bid.photos", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `len(new.details.photos) > 0 && all(new.details.photos, # != "")`},
		Rule{Event: "bid.flagged", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `!new.details.flagged`},
	)
	for _, tc := range []struct {
		name    string
		details string
		want    []string
	}{
		{"empty object", `{}`, nil},
		{"explicit nulls", `{"amount": null, "card": null, "photos": null, "flagged": null}`, nil},
		{"nested key missing", `{"amount": 150, "card": {}, "photos": ["a"], "flagged": false}`, []string{"bid.big", "bid.photos", "bid.flagged"}},
		{"all there", `{"amount": 50, "card": {"brand": "visa"}, "photos": [], "flagged": true}`, []string{"bid.deep"}},
	} {
		evs, err := m.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "title": "x", "details": json.RawMessage(tc.details)})))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var got []string
		for _, e := range evs {
			got = append(got, e.Type)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: events %v, want %v", tc.name, got, tc.want)
		}
	}
	if st := m.Stats(); st.WhenUnknown != 9 {
		t.Errorf("Stats().WhenUnknown = %d, want 9", st.WhenUnknown)
	}
	x := m.Explain(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "details": json.RawMessage(`{}`)})), 0)
	if r := x.Rules[0]; r.Matched || r.Err != nil || !strings.Contains(r.Reason, "when is unknown") {
		t.Errorf("explain: %+v", r)
	}
	// Builtins that reflect on a nil fail with reflect's words, not expr's.
	reflecting := mustCompile(t, Options{}, Rule{Event: "bid.tagged", Table: "bids", Ops: []cdc.Op{cdc.OpInsert},
		When: `all(new.details.tags, # != "") || int(new.title) > 0`})
	if evs, err := reflecting.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "details": json.RawMessage(`{}`)}))); err != nil || len(evs) != 0 {
		t.Errorf("all() on a missing key: %v, %v", evs, err)
	}
	if evs, err := reflecting.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "details": json.RawMessage(`{"tags": ["a"]}`)}))); err != nil || len(evs) != 1 {
		t.Errorf("all() on tags: %v, %v", evs, err)
	}
	if evs, err := reflecting.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "details": json.RawMessage(`{"tags": [""]}`)}))); err != nil || len(evs) != 0 {
		t.Errorf("int() on a NULL title: %v, %v", evs, err)
	}
	if st := reflecting.Stats(); st.WhenUnknown != 2 {
		t.Errorf("reflecting builtins: Stats().WhenUnknown = %d, want 2", st.WhenUnknown)
	}
	// A rule's own mistake still stops the run, json beside it or not.
	bad := mustCompile(t, Options{}, Rule{Event: "bid.bad", Table: "bids", Ops: []cdc.Op{cdc.OpInsert},
		When: `new.title > 5 || new.details.amount > 100`})
	_, err := bad.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1), "title": "x", "details": json.RawMessage(`{}`)})))
	if !errors.Is(err, ErrEvaluation) || !strings.Contains(err.Error(), "invalid operation: string > int") {
		t.Errorf("text compared with a number: err = %v, want the evaluation error", err)
	}
}

// NaN and the infinities of numeric and float columns (cdc.NonFinite) are
// numbers in when:, compared as IEEE floats: NaN is neither above nor
// below anything, Infinity is above every number. They render as the text
// PostgreSQL prints, as before; a text column saying "NaN" stays text.
func TestMapNonFiniteNumbers(t *testing.T) {
	t.Parallel()
	lots := testRel(11, "public.lots", 'f', "id", "auction_id", "price", "rate", "label", "bids")
	id := []DataField{{Key: "id", Column: "id"}}
	m := mustCompile(t, Options{},
		Rule{Event: "lot.dear", Table: "lots", Ops: []cdc.Op{cdc.OpInsert, cdc.OpUpdate}, When: `new.price > 100`, Data: id},
		Rule{Event: "lot.cheap", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}, When: `new.price <= 100 || new.rate < 0`, Data: id},
		Rule{Event: "lot.odd", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}, When: `new.price != new.price && new.label == "NaN"`, Data: id},
		Rule{Event: "lot.high_bid", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}, When: `any(new.bids, # > 1000)`, Data: id},
		Rule{Event: "lot.repriced", Table: "lots", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"price"},
			Data: []DataField{{Key: "price", Column: "price"}, {Key: "rate", Column: "rate"}, {Key: "bids", Column: "bids"}}},
	)
	nan, inf, neg := cdc.NonFinite("NaN"), cdc.NonFinite("Infinity"), cdc.NonFinite("-Infinity")
	lot := func(price, rate any, bids ...any) map[string]any {
		return map[string]any{"id": int64(1), "auction_id": nan, "price": price, "rate": rate, "label": "NaN", "bids": bids}
	}
	for _, tc := range []struct {
		name string
		ch   cdc.Change
		want string
	}{
		{"NaN compares false", change(cdc.OpInsert, lots, nil, lot(nan, 1.0, json.Number("5"))), "lot.odd NaN {\"id\":1}\n"},
		{"Infinity is above", change(cdc.OpInsert, lots, nil, lot(inf, neg, json.Number("5"), inf)), "lot.dear NaN {\"id\":1}\nlot.cheap NaN {\"id\":1}\nlot.high_bid NaN {\"id\":1}\n"},
		{"-Infinity is below", change(cdc.OpInsert, lots, nil, lot(neg, nan)), "lot.cheap NaN {\"id\":1}\n"},
		{"NaN to NaN is no change", change(cdc.OpUpdate, lots, lot(nan, 1.0), lot(nan, 1.0)), ""},
		{"NaN to Infinity renders as PostgreSQL prints them", change(cdc.OpUpdate, lots, lot(nan, 1.0), lot(inf, nan, json.Number("1.5"), nan, neg)),
			"lot.dear NaN {\"id\":1}\n" + `lot.repriced NaN {"price":"Infinity","rate":"NaN","bids":[1.5,"NaN","-Infinity"]}` + "\n"},
	} {
		evs, err := m.Map(txOf(tc.ch))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := summary(evs); got != tc.want {
			t.Errorf("%s: events =\n%swant\n%s", tc.name, got, tc.want)
		}
	}
	x := m.Explain(txOf(change(cdc.OpInsert, lots, nil, lot(nan, 1.0))), 0)
	if r := x.Rules[0]; r.Matched || r.Err != nil || r.Reason != `when is false: new.price > 100 (new.price="NaN")` {
		t.Errorf("explain: %+v", r)
	}
	// Text that says NaN is text: comparing it with a number is the rule's
	// mistake and stops the run.
	bad := mustCompile(t, Options{}, Rule{Event: "lot.bad", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}, When: `new.label > 100`})
	_, err := bad.Map(txOf(change(cdc.OpInsert, lots, nil, lot(nan, 1.0))))
	if !errors.Is(err, ErrEvaluation) || !strings.Contains(err.Error(), "invalid operation: string > int") {
		t.Errorf("text NaN compared with a number: err = %v, want the evaluation error", err)
	}
}

// A timestamp's 'infinity' and '-infinity' (cdc.InfiniteTime) order after
// and before every time in when:, as in SQL, and render as PostgreSQL
// prints them. Dates are text, where "infinity" already sorts after and
// "-infinity" before every "YYYY-MM-DD"; a text column is text.
func TestMapInfiniteTimes(t *testing.T) {
	t.Parallel()
	aucs := testRel(12, "public.auctions", 'f', "id", "ends_at", "local_end", "due", "note", "rounds")
	id := []DataField{{Key: "id", Column: "id"}}
	m := mustCompile(t, Options{},
		Rule{Event: "auction.over", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, When: `new.ends_at < now() || new.local_end < now()`, Data: id},
		Rule{Event: "auction.open", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, When: `new.ends_at - now() > duration("24h")`, Data: id},
		Rule{Event: "auction.due", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, When: `new.due > "2024-06-01"`, Data: id},
		Rule{Event: "auction.past_round", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, When: `any(new.rounds, # < now())`, Data: id},
		// The idiom docs/mapping.md gives for what was new.ends_at == "infinity".
		Rule{Event: "auction.forever", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, When: `new.ends_at > date("9999-12-31")`, Data: id},
		Rule{Event: "auction.extended", Table: "auctions", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"ends_at"},
			When: `new.ends_at > old.ends_at`, Data: []DataField{{Key: "ends_at", Column: "ends_at"}, {Key: "local_end", Column: "local_end"}, {Key: "rounds", Column: "rounds"}}},
	)
	inf, neg := cdc.InfiniteTime("infinity"), cdc.InfiniteTime("-infinity")
	soon := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	auc := func(ends, local, due any, rounds ...any) map[string]any {
		return map[string]any{"id": int64(1), "ends_at": ends, "local_end": local, "due": due, "note": "infinity", "rounds": rounds}
	}
	for _, tc := range []struct {
		name string
		ch   cdc.Change
		want string
	}{
		{"never ends", change(cdc.OpInsert, aucs, nil, auc(inf, inf, "infinity", soon)), "auction.open  {\"id\":1}\nauction.due  {\"id\":1}\nauction.forever  {\"id\":1}\n"},
		{"ended before all time", change(cdc.OpInsert, aucs, nil, auc(neg, soon.In(cdc.NoZone), "-infinity", soon, neg)), "auction.over  {\"id\":1}\nauction.past_round  {\"id\":1}\n"},
		{"infinity to infinity is no change", change(cdc.OpUpdate, aucs, auc(inf, nil, nil), auc(inf, nil, nil)), ""},
		{"extended to infinity", change(cdc.OpUpdate, aucs, auc(soon, nil, nil), auc(inf, neg, nil, soon, inf)),
			`auction.extended  {"ends_at":"infinity","local_end":"-infinity","rounds":["2030-01-01T00:00:00.000Z","infinity"]}` + "\n"},
		{"not extended from infinity", change(cdc.OpUpdate, aucs, auc(inf, nil, nil), auc(soon, nil, nil)), ""},
	} {
		evs, err := m.Map(txOf(tc.ch))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := summary(evs); got != tc.want {
			t.Errorf("%s: events =\n%swant\n%s", tc.name, got, tc.want)
		}
	}
	x := m.Explain(txOf(change(cdc.OpInsert, aucs, nil, auc(inf, inf, nil))), 0)
	if r := x.Rules[0]; r.Matched || r.Err != nil || r.Reason != `when is false: new.ends_at < now() || new.local_end < now() (new.ends_at="infinity", new.local_end="infinity")` {
		t.Errorf("explain: %+v", r)
	}
	// Text that says infinity is text: comparing it with a time is the
	// rule's mistake and stops the run.
	bad := mustCompile(t, Options{}, Rule{Event: "auction.bad", Table: "auctions", Ops: []cdc.Op{cdc.OpInsert}, When: `new.note < now()`})
	_, err := bad.Map(txOf(change(cdc.OpInsert, aucs, nil, auc(inf, inf, nil))))
	if !errors.Is(err, ErrEvaluation) || !strings.Contains(err.Error(), "invalid operation: string < time.Time") {
		t.Errorf("text infinity compared with a time: err = %v, want the evaluation error", err)
	}
}

// A mapped table renamed while walhook runs stops the run loudly: its
// rules would otherwise match nothing from then on.
func TestMapTableRenamed(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{}, Rule{Event: "lot.created", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}})
	if evs, err := m.Map(txOf(change(cdc.OpInsert, testRel(7, "public.lots", 'd', "id"), nil, map[string]any{"id": "l1"}))); err != nil || len(evs) != 1 {
		t.Fatalf("before the rename: %v, %v", evs, err)
	}
	// An unmapped table renamed is nobody's business.
	if _, err := m.Map(txOf(change(cdc.OpInsert, testRel(8, "public.audit", 'd', "id"), nil, map[string]any{"id": "a"}))); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Map(txOf(change(cdc.OpInsert, testRel(8, "public.audit_old", 'd', "id"), nil, map[string]any{"id": "a"}))); err != nil {
		t.Fatalf("an unmapped table renamed: %v", err)
	}
	_, err := m.Map(txOf(change(cdc.OpInsert, testRel(7, "public.lots_old", 'd', "id"), nil, map[string]any{"id": "l2"})))
	if !errors.Is(err, ErrUnknownTable) || !strings.Contains(err.Error(), "table public.lots was renamed to public.lots_old, so the rules") {
		t.Fatalf("after the rename: err = %v", err)
	}

	// A process that starts after the rename, replaying the change, knows
	// the table by the OID the live schema gave at startup.
	cold := mustCompile(t, Options{}, Rule{Event: "lot.created", Table: "lots", Ops: []cdc.Op{cdc.OpInsert}})
	if err := cold.CheckSchema(map[string]TableSchema{"public.lots": {Columns: []string{"id"}, Keys: []string{"id"}, OID: 7}}); err != nil {
		t.Fatal(err)
	}
	_, err = cold.Map(txOf(change(cdc.OpInsert, testRel(7, "public.lots_old", 'd', "id"), nil, map[string]any{"id": "l2"})))
	if !errors.Is(err, ErrUnknownTable) || !strings.Contains(err.Error(), "table public.lots was renamed to public.lots_old") {
		t.Fatalf("a fresh process, after the rename: err = %v", err)
	}
}

// A rule reading a generated column is refused at the schema check: logical
// replication does not send it, so the first change would stop the run.
func TestCheckSchemaGeneratedColumn(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{}, Rule{Event: "lot.created", Table: "lots", Ops: []cdc.Op{cdc.OpInsert},
		Data: []DataField{{Key: "id", Column: "id"}, {Key: "total", Column: "total"}}})
	err := m.CheckSchema(map[string]TableSchema{"public.lots": {Columns: []string{"id", "price"}, Generated: []string{"total"}, Keys: []string{"id"}}})
	if !errors.Is(err, ErrGeneratedColumn) || !errors.Is(err, ErrUnknownColumn) || !strings.Contains(err.Error(), `column "total" of public.lots is a generated column, which logical replication (PostgreSQL 15) does not send`) {
		t.Fatalf("err = %v", err)
	}
}

// The schema check names every problem of a rule at once: a misspelt
// column does not hide that the table does not send the old values the
// rule reads elsewhere (check would otherwise show the second problem
// only on its next run).
func TestCheckSchemaReportsEveryProblemOfARule(t *testing.T) {
	t.Parallel()
	m := mustCompile(t, Options{}, Rule{Event: "lot.renamed", Table: "lots", Ops: []cdc.Op{cdc.OpUpdate},
		Changed: []string{"status"}, Data: []DataField{{Key: "id", Column: "id"}, {Key: "title", Column: "titel"}}})
	err := m.CheckSchema(map[string]TableSchema{"public.lots": {Columns: []string{"id", "title", "status"}, Keys: []string{"id"}, ReplicaIdentity: 'd'}})
	if !errors.Is(err, ErrUnknownColumn) || !errors.Is(err, ErrNeedsOldValues) {
		t.Fatalf("err = %v; want both the missing column and the old values", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `column "titel" does not exist`) || !strings.Contains(msg, "reads old values (changed: status)") {
		t.Fatalf("err = %v", err)
	}
}

func TestBodies(t *testing.T) {
	t.Parallel()
	ev := Event{ID: "e", Type: "problem.created", AuctionID: "a1", Envelope: EnvelopeAuctionExcellence, OccurredAt: commitTime, Data: json.RawMessage(`{"id":1}`)}
	if got := string(ev.Body("wh_1")); got != `{"event":"problem.created","timestamp":"2024-05-06T07:08:09.123Z","webhook_id":"wh_1","auction_id":"a1","data":{"id":1}}` {
		t.Fatalf("auction-excellence body = %s", got)
	}
	ev.Envelope, ev.Domain, ev.AuctionID = EnvelopeSNS, "x.sol", ""
	if got := string(ev.Body("evt_1")); got != `{"event":"problem.created","auctionId":null,"domain":"x.sol","data":{"id":1},"timestamp":1714979289,"id":"evt_1"}` {
		t.Fatalf("sns body = %s", got)
	}
}

// A `timestamp without time zone` value (cdc.NoZone) renders its wall
// clock without a zone, where a timestamptz renders in UTC with a "Z"; it
// compares (when:, changed:) as if it were UTC.
func TestMapTimestampWithoutZone(t *testing.T) {
	t.Parallel()
	rel := testRel(9, "public.slots", 'f', "id", "auction_id", "at", "local", "locals")
	m := mustCompile(t, Options{},
		Rule{Event: "slot.moved", Table: "public.slots", Ops: []cdc.Op{cdc.OpUpdate}, Changed: []string{"local"},
			When: `new.local > new.at`, Data: []DataField{{Key: "at", Column: "at"}, {Key: "local", Column: "local"}, {Key: "locals", Column: "locals"}}})
	at := time.Date(2024, 3, 1, 10, 0, 0, 250_000_000, time.FixedZone("CET", 3600))
	local := func(h int) time.Time { return time.Date(2024, 3, 1, h, 0, 0, 0, cdc.NoZone) }
	row := func(h int) map[string]any {
		return map[string]any{"id": int64(1), "auction_id": "a1", "at": at, "local": local(h), "locals": []any{local(h), nil}}
	}
	evs, err := m.Map(txOf(
		change(cdc.OpUpdate, rel, row(8), row(12)), // moved, and 12:00 is after 09:00 UTC
		change(cdc.OpUpdate, rel, row(8), row(8)),  // not changed
		change(cdc.OpUpdate, rel, row(12), row(9)), // changed, but 09:00 is not after 09:00:00.250 UTC
	))
	if err != nil {
		t.Fatal(err)
	}
	want := `slot.moved a1 {"at":"2024-03-01T09:00:00.250Z","local":"2024-03-01T12:00:00.000","locals":["2024-03-01T12:00:00.000",null]}` + "\n"
	if got := summary(evs); got != want {
		t.Fatalf("events =\n%swant\n%s", got, want)
	}
}

// json numbers in when: are numbers as a numeric column's are: an integer
// compares equal to an integer or float literal, a fraction stays a
// fraction, and one beyond float64's range (valid jsonb, whose numbers
// are numeric) is ±Inf or 0 rather than turning the whole document into
// a string that fails the expression and stops the run.
func TestMapWhenOnJSONNumbers(t *testing.T) {
	t.Parallel()
	bids := testRel(10, "public.bids", 'f', "id", "details")
	m := mustCompile(t, Options{},
		Rule{Event: "bid.three", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.n == 3 && new.details.n == 3.0`},
		Rule{Event: "bid.half", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.f > 0.25 && new.details.f < 0.75`},
		Rule{Event: "bid.huge", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.list[0].big > 1e300 && len(new.details.list) == 2`},
		Rule{Event: "bid.tiny", Table: "bids", Ops: []cdc.Op{cdc.OpInsert}, When: `new.details.tiny == 0`},
	)
	evs, err := m.Map(txOf(change(cdc.OpInsert, bids, nil, map[string]any{"id": int64(1),
		"details": json.RawMessage(`{"n": 3, "f": 0.5, "list": [{"big": 1e400}, -1e400], "tiny": 1e-400}`)})))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.Type)
	}
	if want := []string{"bid.three", "bid.half", "bid.huge", "bid.tiny"}; !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}
