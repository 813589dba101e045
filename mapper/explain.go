package mapper

import (
	"fmt"
	"strings"
	"time"

	"github.com/walhook/walhook/cdc"
)

// RuleOutcome is what one rule did with one change: the dry run's answer
// to "why did (or didn't) this fire".
type RuleOutcome struct {
	Rule  int    // index of the rule in the config
	Event string // its event type
	Where string // its place in the config
	// Matched: the rule produced Event (see Explanation.Events).
	Matched bool
	// Reason says why not, in words: operation not listed, changed
	// columns equal, when false (with the values it read), value not sent.
	Reason string
	// Err: the rule cannot be applied to this change at all (a column it
	// names is missing, the old row it reads was not sent, the expression
	// failed). Map returns such an error for the whole transaction.
	Err error
}

// Explanation is the dry run's account of one change.
type Explanation struct {
	Events []Event
	// Rules are the rules of the change's table, in rule order; empty
	// when no rule reads the table (or for truncates and messages).
	Rules []RuleOutcome
}

// Explain applies every rule of the change's table to tx.Changes[i] like
// Map does, and says for each rule whether it matched and why not. It is
// for the dry run: it resolves the rules against the change's relation
// each time and counts nothing in Stats.
func (m *Mapper) Explain(tx *cdc.Tx, i int) Explanation {
	ch := &tx.Changes[i]
	var out Explanation
	if ch.Rel == nil || ch.Op < cdc.OpInsert || ch.Op > cdc.OpDelete {
		return out
	}
	tp := &tablePlan{rel: ch.Rel, table: ch.Rel.Table()}
	for k, c := range ch.Rel.Columns {
		if c.Key {
			tp.keys = append(tp.keys, k)
		}
	}
	for _, r := range m.byTable[tp.table] {
		o := RuleOutcome{Rule: r.index, Event: r.Event, Where: r.Where}
		if !r.has(ch.Op) {
			// Decided before the columns are looked at, so a sample
			// change is not blamed for columns a rule for another
			// operation reads.
			o.Reason = reason(ch, &rulePlan{r: r}, result{kind: resOp})
			out.Rules = append(out.Rules, o)
			continue
		}
		var errs errorList
		rp := m.resolve(r, ch.Rel, &errs)
		if rp == nil {
			o.Err = errs.err()
			out.Rules = append(out.Rules, o)
			continue
		}
		ev, res, err := m.eval(tx, ch, tp, rp, true)
		switch {
		case err != nil:
			o.Err = err
		case res.kind == resMatched:
			o.Matched = true
			out.Events = append(out.Events, ev)
		default:
			o.Reason = reason(ch, rp, res)
		}
		out.Rules = append(out.Rules, o)
	}
	return out
}

func reason(ch *cdc.Change, rp *rulePlan, res result) string {
	r := rp.r
	switch res.kind {
	case resOp:
		var ops []string
		for _, op := range r.Ops {
			ops = append(ops, op.String())
		}
		return fmt.Sprintf("operation %s not listed (%s)", ch.Op, strings.Join(ops, ", "))
	case resUnchanged:
		var b strings.Builder
		for i, c := range r.Changed {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(c)
			b.WriteString("=")
			b.Write(appendEnvValue(nil, envValue(ch.New[rp.changed[i]])))
		}
		return fmt.Sprintf("changed: no column changed value (%s in old and new row)", b.String())
	case resWhenFalse, resWhenUnknown:
		var vals []string
		for _, c := range append(append([]colSrc(nil), rp.whenOld...), rp.whenNew...) {
			vals = append(vals, c.envKey+"="+string(appendEnvValue(nil, rp.env[c.envKey])))
		}
		s := "when is false: " + r.When
		if res.kind == resWhenUnknown {
			s = "when is unknown (it reads a NULL, as in SQL: not matched): " + r.When
		}
		if len(vals) > 0 {
			s += " (" + strings.Join(vals, ", ") + ")"
		}
		return s
	case resUnavailable:
		return fmt.Sprintf("skipped: column %s is an unchanged TOAST value PostgreSQL did not send (REPLICA IDENTITY FULL sends it)", res.column)
	}
	return ""
}

// appendEnvValue appends an expression value as JSON for an explanation,
// showing a timestamp's infinity as PostgreSQL prints it rather than as
// the time that stands for it.
func appendEnvValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case time.Time:
		switch {
		case x.Equal(afterAllTime):
			return append(b, `"infinity"`...)
		case x.Equal(beforeAllTime):
			return append(b, `"-infinity"`...)
		}
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendEnvValue(b, e)
		}
		return append(b, ']')
	}
	return appendValue(b, v)
}

// UpdateReads returns the columns the table's update rules read, each
// once in rule order, and whether one of them reads or sends the whole
// row (no data list, or a when that indexes the row). An update that
// leaves a large (TOASTed) value unchanged does not carry it unless the
// table has REPLICA IDENTITY FULL, and an event that needs it is skipped:
// check warns about such columns.
func (m *Mapper) UpdateReads(table string) (cols []string, whole bool) {
	s, t := splitTable(table)
	add := uniqueAppender(&cols)
	for _, r := range m.byTable[s+"."+t] {
		if !r.has(cdc.OpUpdate) {
			continue
		}
		whole = whole || len(r.Data) == 0 || r.whenWholeNew
		r.columns(true, add)
	}
	return cols, whole
}

// Columns returns the columns the rules of table ("schema.table" or
// "table") name, in rule order, each once: changed, when, data, auction
// id and domain columns. Rules that send the whole row add none. The
// offline dry run uses it to complete sample rows.
func (m *Mapper) Columns(table string) []string {
	s, t := splitTable(table)
	var out []string
	add := uniqueAppender(&out)
	for _, r := range m.byTable[s+"."+t] {
		r.columns(false, add)
	}
	return out
}

// uniqueAppender returns a func that appends a non-empty name to *list
// unless it holds it already.
func uniqueAppender(list *[]string) func(string) {
	seen := map[string]bool{}
	return func(c string) {
		if c != "" && !seen[c] {
			seen[c] = true
			*list = append(*list, c)
		}
	}
}
