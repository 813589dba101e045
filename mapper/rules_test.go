package mapper

import (
	"errors"
	"strings"
	"testing"

	"github.com/walhook/walhook/config"
)

// seedSchema is testdata/auction-excellence/schema.sql as CheckSchema sees
// it (what `walhook check` reads from the catalog).
func seedSchema() map[string]TableSchema {
	out := map[string]TableSchema{}
	for _, r := range seedRels() {
		ts := TableSchema{ReplicaIdentity: r.ReplicaIdentity, Keys: []string{r.Columns[0].Name}}
		for _, c := range r.Columns {
			ts.Columns = append(ts.Columns, c.Name)
		}
		out[r.Table()] = ts
	}
	return out
}

const badHeader = `source:
  dsn: postgres://localhost/app
events:
`

// TestBadRules: each bad rule fails with its exact message, naming the
// YAML line and column of the rule (or of the data field).
func TestBadRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		yaml     string // appended to badHeader, so rules start on line 4
		sentinel error
		want     string
	}{
		{
			name: "unknown table",
			yaml: `  - event: problem.created
    table: problem_report
    operations: [insert]
`,
			sentinel: ErrUnknownTable,
			want:     `bad.yaml:4:5: events[0].table: event problem.created: table public.problem_report does not exist (or is not readable)`,
		},
		{
			name: "unknown column in data",
			yaml: `  - event: problem.created
    table: problem_reports
    operations: [insert]
    data:
      - id
      - headline: titel
`,
			sentinel: ErrUnknownColumn,
			want:     `bad.yaml:9:9: events[0].data[1]: event problem.created: column "titel" does not exist in public.problem_reports`,
		},
		{
			name: "unknown column in changed",
			yaml: `  - event: problem.status_changed
    table: problem_reports
    operations: [update]
    changed: [state]
`,
			sentinel: ErrUnknownColumn,
			want:     `bad.yaml:4:5: events[0].changed: event problem.status_changed: column "state" does not exist in public.problem_reports`,
		},
		{
			name: "unknown column in when",
			yaml: `  - event: message.deleted
    table: messages
    operations: [update]
    when: old.deleted == nil && new.deleted != nil
`,
			sentinel: ErrUnknownColumn,
			want:     `bad.yaml:4:5: events[0].when: event message.deleted: column "deleted" does not exist in public.messages`,
		},
		{
			name: "expression type error",
			yaml: `  - event: message.deleted
    table: messages
    operations: [update]
    when: old.deleted_at == nil && "yes"
`,
			sentinel: ErrExpression,
			want:     "bad.yaml:4:5: events[0].when: event message.deleted: invalid operation: && (mismatched types bool and string) (1:23)\n | old.deleted_at == nil && \"yes\"\n | ......................^",
		},
		{
			name: "expression not boolean",
			yaml: `  - event: message.deleted
    table: messages
    operations: [update]
    when: len(new.body)
`,
			sentinel: ErrExpression,
			want:     "bad.yaml:4:5: events[0].when: event message.deleted: expected bool, but got int",
		},
		{
			name: "changed on a DEFAULT identity table",
			yaml: `  - event: inspection.regraded
    table: inspections
    operations: [update]
    changed: [grade]
`,
			sentinel: ErrNeedsOldValues,
			want:     `bad.yaml:4:5: events[0]: event inspection.regraded: reads old values (changed: grade) but public.inspections has REPLICA IDENTITY DEFAULT, which does not send them; run: ALTER TABLE public.inspections REPLICA IDENTITY FULL;`,
		},
		{
			name: "delete reading non-key columns on a DEFAULT identity table",
			yaml: `  - event: inspection.deleted
    table: inspections
    operations: [delete]
    data:
      - id
      - grade
`,
			sentinel: ErrNeedsOldValues,
			want:     `bad.yaml:4:5: events[0]: event inspection.deleted: reads old values (auction_id: auction_id, data: grade) but public.inspections has REPLICA IDENTITY DEFAULT, which does not send them; run: ALTER TABLE public.inspections REPLICA IDENTITY FULL;`,
		},
		{
			name: "duplicate event name with conflicting shape",
			yaml: `  - event: member.removed
    table: members
    operations: [update]
    when: old.removed_at == nil && new.removed_at != nil
    data: [id, email]
  - event: member.removed
    table: members
    operations: [delete]
    data: [id, email_address: email]
`,
			sentinel: ErrConflict,
			want:     `bad.yaml:9:5: events[1].data: event member.removed: data has keys (id, email_address), but the same event has keys (id, email) at bad.yaml:4:5: events[0]; one event type has one body shape`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Parse("bad.yaml", []byte(badHeader+tt.yaml), nil)
			if err != nil {
				t.Fatalf("config: %v", err)
			}
			m, err := Compile(RulesFromConfig(cfg), Options{})
			if err == nil {
				err = m.CheckSchema(seedSchema())
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error:\n%v\nwant:\n%s", err, tt.want)
			}
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("error does not wrap %v", tt.sentinel)
			}
			var re *RuleError
			if !errors.As(err, &re) || !strings.HasPrefix(re.Where, "bad.yaml:") {
				t.Fatalf("not a *RuleError with a place: %#v", err)
			}
		})
	}
}

// TestSeedConfigsCheck: both seed configs compile and pass the schema
// check against their sample schema.
func TestSeedConfigCheck(t *testing.T) {
	t.Parallel()
	m := seedMapper(t)
	if err := m.CheckSchema(seedSchema()); err != nil {
		t.Fatal(err)
	}
	if n := len(m.Events()); n != 17 {
		t.Fatalf("%d event types, want 17", n)
	}
}
