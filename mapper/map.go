package mapper

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/expr-lang/expr/file"

	"github.com/walhook/walhook/cdc"
)

// Map maps one transaction (or one chunk of a large one) to events, in
// change order and, per change, in rule order.
//
// An error means the transaction cannot be mapped at all (a rule names a
// column the relation no longer has, a table stopped sending the old row a
// rule reads, an expression failed on a row): the caller must stop rather
// than skip it. A value a rule needs that is an unchanged TOAST value
// PostgreSQL did not send skips only that event; it is logged with table
// and key and counted in Stats.SkippedUnavailable.
//
// Truncates and logical decoding messages produce no events: rules are
// about row changes, and a truncate carries no rows.
//
// A change no rule matches costs no allocation.
func (m *Mapper) Map(tx *cdc.Tx) ([]Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Event
	for i := range tx.Changes {
		ch := &tx.Changes[i]
		m.stats.Changes++
		if ch.Rel == nil || ch.Op < cdc.OpInsert || ch.Op > cdc.OpDelete {
			continue
		}
		p := m.plans[ch.Rel.OID]
		if p == nil || p.rel != ch.Rel {
			var err error
			if p, err = m.plan(ch.Rel); err != nil {
				return nil, m.txErr(tx, ch, err)
			}
		}
		if p.err != nil {
			return nil, m.txErr(tx, ch, p.err)
		}
		for _, rp := range p.rules {
			ev, res, err := m.eval(tx, ch, p, rp, true)
			if err != nil {
				return nil, m.txErr(tx, ch, err)
			}
			switch res.kind {
			case resMatched:
				out = append(out, ev)
				m.stats.Events++
			case resWhenUnknown:
				m.stats.WhenUnknown++
			case resUnavailable:
				m.stats.SkippedUnavailable++
				m.log.Warn("event skipped: a value it needs is an unchanged TOAST value PostgreSQL did not send; set REPLICA IDENTITY FULL on the table to receive it",
					slog.String("event", rp.r.Event),
					slog.String("table", ch.Rel.Table()),
					slog.String("key", keyOf(ch, p)),
					slog.String("column", res.column),
					slog.Uint64("xid", uint64(tx.Xid)),
					slog.String("commit_lsn", tx.CommitLSN.String()),
					slog.Int("position", ch.Position),
					slog.String("rule", rp.r.Where))
			}
		}
	}
	return out, nil
}

func (m *Mapper) txErr(tx *cdc.Tx, ch *cdc.Change, err error) error {
	table := "?"
	if ch.Rel != nil {
		table = ch.Rel.Table()
	}
	return fmt.Errorf("map transaction %d (commit %s), change %d (%s on %s): %w",
		tx.Xid, tx.CommitLSN, ch.Position, ch.Op, table, err)
}

// resultKind says what one rule did with one change.
type resultKind uint8

const (
	resMatched     resultKind = iota
	resOp                     // operation not listed
	resUnchanged              // changed columns all equal by value
	resWhenFalse              // when evaluated to false
	resWhenUnknown            // when failed on a nil: a NULL, a missing json value (SQL's unknown: no match)
	resUnavailable            // a needed value is an unavailable TOAST value
)

// result is the outcome of one rule on one change; column names the value
// for resUnavailable.
type result struct {
	kind   resultKind
	column string
}

// value returns the column value src reads for change ch; ok is false when
// the row does not exist for this operation.
func value(ch *cdc.Change, src colSrc) (cdc.Value, bool) {
	var row []cdc.Value
	switch src.from {
	case fromNew:
		row = ch.New
	case fromOld:
		row = ch.Old
	default:
		if ch.Op == cdc.OpDelete {
			row = ch.Old
		} else {
			row = ch.New
		}
	}
	if src.idx < 0 || src.idx >= len(row) {
		return cdc.Value{State: cdc.Absent}, row != nil
	}
	return row[src.idx], true
}

// eval applies one rule to one change. With build false it only decides
// (for the dry run's explanations) and returns no Event.
func (m *Mapper) eval(tx *cdc.Tx, ch *cdc.Change, p *tablePlan, rp *rulePlan, build bool) (Event, result, error) {
	r := rp.r
	if !r.has(ch.Op) {
		return Event{}, result{kind: resOp}, nil
	}
	if ch.Op == cdc.OpUpdate && rp.needsOld {
		if err := checkOldRow(ch, rp); err != nil {
			return Event{}, result{}, err
		}
	}
	if ch.Op == cdc.OpUpdate && len(rp.changed) > 0 {
		changed := false
		for _, idx := range rp.changed {
			if !equalValue(ch.Old[idx], ch.New[idx]) {
				changed = true
				break
			}
		}
		if !changed {
			return Event{}, result{kind: resUnchanged}, nil
		}
	}
	if r.when != nil {
		ok, res, err := m.evalWhen(ch, p, rp)
		if err != nil || res.kind != resMatched {
			return Event{}, res, err
		}
		if !ok {
			return Event{}, result{kind: resWhenFalse}, nil
		}
	}
	// Every value the event reads must be available before anything is
	// rendered, so a skipped event allocates nothing.
	for i := range rp.data {
		if d := &rp.data[i]; d.col.idx >= 0 {
			if v, _ := value(ch, d.col); v.State == cdc.Unavailable {
				return Event{}, result{kind: resUnavailable, column: d.col.name}, nil
			}
		}
	}
	var auction, domain cdc.Value
	if rp.auction.idx >= 0 {
		auction, _ = value(ch, rp.auction)
		if auction.State == cdc.Unavailable {
			return Event{}, result{kind: resUnavailable, column: rp.auction.name}, nil
		}
	}
	if rp.domain.idx >= 0 {
		domain, _ = value(ch, rp.domain)
		if domain.State == cdc.Unavailable {
			return Event{}, result{kind: resUnavailable, column: rp.domain.name}, nil
		}
	}
	if !build {
		return Event{}, result{kind: resMatched}, nil
	}
	ev := Event{
		ID:         m.eventID(tx, ch.Position, r.index),
		Type:       r.Event,
		Envelope:   r.envelope,
		OccurredAt: tx.CommitTime.UTC(),
		Table:      p.table,
		Position:   ch.Position,
		Rule:       r.index,
	}
	if auction.State == cdc.Present && rp.auction.idx >= 0 {
		ev.AuctionID = keyString(auction.V)
	}
	if r.envelope == EnvelopeSNS {
		if rp.domain.idx >= 0 {
			if domain.State == cdc.Present {
				ev.Domain = keyString(domain.V)
			}
		} else {
			ev.Domain = r.domainConst
		}
	}
	ev.Data = renderData(ch, rp)
	return ev, result{kind: resMatched}, nil
}

// checkOldRow fails an update that lacks old values a rule reads: the
// table was announced FULL (or the rule only reads keys), so a missing
// old row means the stream and the schema disagree. Never "changed".
func checkOldRow(ch *cdc.Change, rp *rulePlan) error {
	if ch.Old == nil {
		return &RuleError{Where: rp.r.Where, Event: rp.r.Event, Err: &causeError{
			msg:   fmt.Sprintf("update of %s arrived without the old row, which this rule reads; run: ALTER TABLE %s REPLICA IDENTITY FULL;", ch.Rel.Table(), quoteTable(ch.Rel.Schema, ch.Rel.Name)),
			cause: ErrNeedsOldValues,
		}}
	}
	check := func(field string, idx int) error {
		if idx >= 0 && idx < len(ch.Old) && ch.Old[idx].State == cdc.Absent {
			return &RuleError{Where: rp.r.Where, Field: field, Event: rp.r.Event, Err: &causeError{
				msg:   fmt.Sprintf("update of %s arrived without the old value of %s, which this rule reads; run: ALTER TABLE %s REPLICA IDENTITY FULL;", ch.Rel.Table(), ch.Rel.Columns[idx].Name, quoteTable(ch.Rel.Schema, ch.Rel.Name)),
				cause: ErrNeedsOldValues,
			}}
		}
		return nil
	}
	for _, idx := range rp.changed {
		if err := check("changed", idx); err != nil {
			return err
		}
	}
	for _, c := range rp.whenOld {
		if err := check("when", c.idx); err != nil {
			return err
		}
	}
	for i := range rp.data {
		if d := &rp.data[i]; d.col.from == fromOld {
			if err := check("data", d.col.idx); err != nil {
				return err
			}
		}
	}
	if rp.auction.from == fromOld {
		if err := check("auction_id", rp.auction.idx); err != nil {
			return err
		}
	}
	if rp.domain.from == fromOld {
		if err := check("domain", rp.domain.idx); err != nil {
			return err
		}
	}
	return nil
}

// opNames are the values of `op` in expressions, boxed once so setting
// them allocates nothing.
var opNames = [...]any{cdc.OpInsert: "insert", cdc.OpUpdate: "update", cdc.OpDelete: "delete"}

// presentRow stands for an existing row in expressions that read only
// its columns (through the flat keys) and compare the row with nil.
var presentRow any = map[string]any{}

// absentRow is old for inserts and new for deletes: `old == nil` holds
// and `old.x` is nil rather than a run-time error.
var absentRow any = map[string]any(nil)

// evalWhen runs the rule's expression on the reused env: only the columns
// the expression reads are set.
func (m *Mapper) evalWhen(ch *cdc.Change, p *tablePlan, rp *rulePlan) (bool, result, error) {
	r := rp.r
	oldRow, newRow := ch.Old, ch.New
	if ch.Op == cdc.OpInsert {
		oldRow = nil
	}
	if ch.Op == cdc.OpDelete {
		newRow = nil
	}
	env := rp.env
	env["op"] = opNames[ch.Op]
	if res, ok := fillEnv(env, p.rel, oldRow, rp.whenOld, r.whenWholeOld, "old"); !ok {
		return false, res, nil
	}
	if res, ok := fillEnv(env, p.rel, newRow, rp.whenNew, r.whenWholeNew, "new"); !ok {
		return false, res, nil
	}
	out, err := rp.vm.Run(r.when, env)
	if err != nil {
		// An ordering, arithmetic, ! or a function on a nil fails in expr
		// where SQL says unknown. Every nil the expression meets comes
		// from the data: a NULL column, the absent row of an insert or
		// delete, a key a json value lacks or holds as null (expr refuses
		// nil literals in such places when the rule is compiled). So no
		// match rather than a halt of the whole stream, which would stop
		// at the same row on every restart. A failure on values that are
		// all there is the rule's (text compared with a number).
		if nilOperand(err) {
			return false, result{kind: resWhenUnknown}, nil
		}
		where, field := r.whenWhere()
		return false, result{}, &RuleError{Where: where, Field: field, Event: r.Event,
			Err: &causeError{msg: fmt.Sprintf("%s on %s: %v", r.When, p.rel.Table(), err), cause: ErrEvaluation}}
	}
	b, ok := out.(bool)
	switch {
	case !ok && out == nil:
		// `when: new.flag` on a NULL: unknown, as a nil operand is.
		return false, result{kind: resWhenUnknown}, nil
	case !ok:
		// The fast program leaves out expr.AsBool, which would say this:
		// a when over a column that is not boolean.
		where, field := r.whenWhere()
		return false, result{}, &RuleError{Where: where, Field: field, Event: r.Event,
			Err: &causeError{msg: fmt.Sprintf("%s on %s: expected bool, but got %s", r.When, p.rel.Table(), whenKind(out)), cause: ErrEvaluation}}
	}
	return b, result{kind: resMatched}, nil
}

// whenKind names the type of a value when: gave instead of a bool.
func whenKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "a json object"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("%T", v)
}

// nilOperand reports whether an expr run-time error is about a nil
// operand, not a type mismatch between present values: expr names a nil
// operand's type "<nil>" (`<nil> > int`, `cannot fetch x from <nil>`,
// `invalid argument for len (type <nil>)`), fails a conversion with
// "interface {} is nil" (`!nil`, `upper(nil)`), builtins that reflect on
// their argument fail with reflect's "zero Value" (`all(nil, …)`,
// `int(nil)`) or name its kind "invalid" (`cannot get keys from invalid`,
// `cannot uniq invalid`, `cannot concat invalid`). (Slicing a nil says
// "cannot slice 0", as slicing a number from 0 does: that stays a stop.)
// An element past the end of a list (`new.tags[0]` of an empty array, of
// a json list) is missing too, as SQL's tags[1] and jsonb's ->0 are NULL:
// expr says "index out of range".
// quotedRE matches a double-quoted string in an error message;
// conversionRE expr's refusal of a conversion, which writes the value.
var (
	quotedRE     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	conversionRE = regexp.MustCompile(`^invalid operation: \w+\(.*\)$`)
)

func nilOperand(err error) bool {
	msg := err.Error()
	// The message alone: Error() quotes the expression's source too, and a
	// string literal in it must not pass for a nil.
	var fe *file.Error
	if errors.As(err, &fe) {
		msg = fe.Message
	}
	// Nor the data it quotes: strconv.Atoi: parsing "<nil>", or writes
	// out: int(<nil>) is int() of the text "<nil>" (of a nil it is
	// reflect's "zero Value").
	msg = quotedRE.ReplaceAllString(msg, `""`)
	if conversionRE.MatchString(msg) {
		return false
	}
	for _, s := range []string{"<nil>", " is nil", "on zero Value", "from invalid", "uniq invalid", "flatten invalid",
		"concat invalid", "index out of range: "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// fillEnv sets one row's part of the env; ok is false when a column the
// expression reads is an unavailable TOAST value.
func fillEnv(env map[string]any, rel *cdc.Relation, row []cdc.Value, cols []colSrc, whole bool, name string) (result, bool) {
	if row == nil {
		env[name] = absentRow
		for _, c := range cols {
			env[c.envKey] = nil
		}
		return result{}, true
	}
	for _, c := range cols {
		v := row[c.idx]
		if v.State == cdc.Unavailable {
			return result{kind: resUnavailable, column: c.name}, false
		}
		env[c.envKey] = envValue(v)
	}
	if !whole {
		env[name] = presentRow
		return result{}, true
	}
	full := make(map[string]any, len(row))
	for i, v := range row {
		if v.State == cdc.Unavailable {
			return result{kind: resUnavailable, column: rel.Columns[i].Name}, false
		}
		if v.State != cdc.Absent {
			full[rel.Columns[i].Name] = envValue(v)
		}
	}
	env[name] = full
	return result{}, true
}

// renderData renders the data object.
func renderData(ch *cdc.Change, rp *rulePlan) json.RawMessage {
	b := make([]byte, 0, 64*len(rp.data)+2)
	b = append(b, '{')
	for i := range rp.data {
		d := &rp.data[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, d.key...)
		if d.col.idx < 0 {
			b = append(b, d.konst...)
			continue
		}
		v, _ := value(ch, d.col)
		if v.State != cdc.Present {
			b = append(b, "null"...)
			continue
		}
		b = appendValue(b, v.V)
	}
	b = append(b, '}')
	return b
}

// eventID is EventID for a change of tx under the mapper's system id and
// id epoch; the transaction SetLegacyIDs names keeps the unordered ids an
// older walhook stored part of it with.
func (m *Mapper) eventID(tx *cdc.Tx, position, rule int) string {
	var epoch uint32
	if e := m.epoch.Load(); e != nil {
		epoch = e.n
		if tx.CommitLSN < e.from && epoch > 0 {
			epoch--
		}
	}
	if l := m.legacyIDs.Load(); l != 0 && cdc.LSN(l) == tx.CommitLSN {
		return legacyEventID(m.opts.SystemID, epoch, tx.Xid, tx.CommitLSN, position, rule)
	}
	return EventID(m.opts.SystemID, epoch, tx.Xid, tx.CommitLSN, position, rule)
}

// orderedIDMark begins every ordered event id (33 characters); the
// unordered ids of walhook before them are 32 hex digits.
const orderedIDMark = '1'

// EventID is deterministic from (system id, id epoch, xid, commit LSN,
// position, rule index): "1", the commit LSN in 16 hex digits, and 16 hex
// digits of the SHA-256 of all of them. Ids of later transactions sort
// after earlier ones, so the store's B-trees on event and delivery ids
// take new entries at their end: with ids that were hashes only, each
// insert went to a random page of an index as large as the history, and
// the first change of a page after a checkpoint is written to the WAL
// whole (4× the WAL per delivery at 2,000,000 stored deliveries). Epoch 0
// is left out of the hash, as it was before epochs existed.
func EventID(systemID string, epoch uint32, xid uint32, commitLSN cdc.LSN, position, rule int) string {
	sum := eventHash(systemID, epoch, xid, commitLSN, position, rule)
	var lsn [8]byte
	binary.BigEndian.PutUint64(lsn[:], uint64(commitLSN))
	var b [33]byte
	b[0] = orderedIDMark
	hex.Encode(b[1:17], lsn[:])
	hex.Encode(b[17:33], sum[:8])
	return string(b[:])
}

// legacyEventID is the event id of walhook before ordered ids: 32 hex
// digits of the hash alone.
func legacyEventID(systemID string, epoch uint32, xid uint32, commitLSN cdc.LSN, position, rule int) string {
	sum := eventHash(systemID, epoch, xid, commitLSN, position, rule)
	return hex.EncodeToString(sum[:16])
}

// OrderedEventLSN returns the commit LSN an ordered event id begins with,
// and false for any other id (an unordered one, a test send's).
func OrderedEventLSN(id string) (cdc.LSN, bool) {
	if len(id) != 33 || id[0] != orderedIDMark {
		return 0, false
	}
	var lsn [8]byte
	if _, err := hex.Decode(lsn[:], []byte(id[1:17])); err != nil {
		return 0, false
	}
	return cdc.LSN(binary.BigEndian.Uint64(lsn[:])), true
}

func eventHash(systemID string, epoch uint32, xid uint32, commitLSN cdc.LSN, position, rule int) [32]byte {
	var buf [28]byte
	binary.BigEndian.PutUint32(buf[0:], xid)
	binary.BigEndian.PutUint64(buf[4:], uint64(commitLSN))
	binary.BigEndian.PutUint64(buf[12:], uint64(position))
	binary.BigEndian.PutUint32(buf[20:], uint32(rule))
	n := 24
	if epoch != 0 {
		binary.BigEndian.PutUint32(buf[24:], epoch)
		n = 28
	}
	h := sha256.New()
	h.Write([]byte(systemID))
	h.Write([]byte{0})
	h.Write(buf[:n])
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// keyOf renders the replica identity key of a change for logs, e.g.
// "id=42".
func keyOf(ch *cdc.Change, p *tablePlan) string {
	row := ch.New
	if ch.Op == cdc.OpDelete {
		row = ch.Old
	}
	var b []byte
	for _, idx := range p.keys {
		if idx >= len(row) {
			continue
		}
		if len(b) > 0 {
			b = append(b, ' ')
		}
		b = append(b, p.rel.Columns[idx].Name...)
		b = append(b, '=')
		if v := row[idx]; v.State == cdc.Present {
			b = append(b, keyString(v.V)...)
		} else {
			b = append(b, "null"...)
		}
	}
	return string(b)
}
