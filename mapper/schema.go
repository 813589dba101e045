package mapper

import (
	"fmt"
	"sort"
	"strings"

	"github.com/expr-lang/expr/vm"

	"github.com/walhook/walhook/cdc"
)

// Row sources of a column read.
const (
	fromNew byte = 'n'
	fromOld byte = 'o'
	fromDef byte = 'd' // the new row, or the old row for deletes
)

// colSrc is a resolved column read: position in the relation and row.
type colSrc struct {
	idx  int // -1: none
	from byte
	name string
	// envKey is the expression env key of a when column: "old.x", "new.x".
	envKey string
}

// dataPlan renders one key of the data object.
type dataPlan struct {
	key   []byte // `"key":` pre-rendered
	col   colSrc
	konst []byte // pre-rendered constant when col.idx < 0
}

// rulePlan is a compiled rule resolved against one *cdc.Relation.
type rulePlan struct {
	r        *compiledRule
	changed  []int
	data     []dataPlan
	auction  colSrc
	domain   colSrc
	whenOld  []colSrc
	whenNew  []colSrc
	needsOld bool // for updates: the rule reads the old row

	// Expression state, reused across changes (guarded by Mapper.mu) so a
	// false `when` allocates nothing: env holds "op", "old", "new" and
	// the flat keys "old.x" / "new.x" of the columns the expression reads.
	env map[string]any
	vm  vm.VM
}

// tablePlan is every rule of one relation, in rule order.
type tablePlan struct {
	rel   *cdc.Relation
	table string // rel.Table(), computed once
	rules []*rulePlan
	keys  []int // replica identity columns, for logs
	err   error
}

// plan returns the cached plan for rel, resolving it on first sight of
// this *Relation. Callers hold m.mu.
func (m *Mapper) plan(rel *cdc.Relation) (*tablePlan, error) {
	if p := m.plans[rel.OID]; p != nil && p.rel == rel {
		return p, p.err
	}
	p := &tablePlan{rel: rel, table: rel.Table()}
	// A table the rules name, announced again under another name: it was
	// renamed (or moved to another schema), and its rules would match
	// nothing from now on. That is a rule naming a table that no longer
	// exists, as loud as a dropped column. The old name comes from an
	// earlier plan of this process or from the live schema at startup.
	oldName := m.tableOIDs[rel.OID]
	if old := m.plans[rel.OID]; old != nil {
		oldName = old.table
	}
	if oldName != "" && oldName != p.table && len(m.byTable[oldName]) > 0 && len(m.byTable[p.table]) == 0 {
		old := &tablePlan{table: oldName}
		r := m.byTable[old.table][0]
		p.err = &RuleError{Where: r.Where, Field: "table", Event: r.Event, Err: &causeError{
			msg: fmt.Sprintf("table %s was renamed to %s, so the rules naming %s would match none of its changes; "+
				"put the new name in the rules (renaming it back helps only changes written after that: PostgreSQL "+
				"decodes each change with the name it had then); if a new table %s took the name, run walhook setup "+
				"to publish it and restart (changes to %s are then not mapped)",
				old.table, p.table, old.table, old.table, p.table), cause: ErrUnknownTable}}
		p.err = fmt.Errorf("relation %s as announced by the server: %w", rel.Table(), p.err)
		m.plans[rel.OID] = p
		return p, p.err
	}
	var errs errorList
	for _, r := range m.byTable[rel.Table()] {
		if rp := m.resolve(r, rel, &errs); rp != nil {
			p.rules = append(p.rules, rp)
		}
	}
	for i, c := range rel.Columns {
		if c.Key {
			p.keys = append(p.keys, i)
		}
	}
	if err := errs.err(); err != nil {
		p.err = fmt.Errorf("relation %s as announced by the server: %w", rel.Table(), err)
	}
	m.plans[rel.OID] = p
	return p, p.err
}

// CheckSchema checks every rule against the source tables (keyed
// "schema.table"): tables and columns exist, and old values are sent
// where a rule needs them. The same checks run at run time on every
// Relation message, so a schema changed after startup is caught too.
func (m *Mapper) CheckSchema(tables map[string]TableSchema) error {
	m.mu.Lock()
	for name, ts := range tables {
		if ts.OID != 0 && len(m.byTable[name]) > 0 {
			if m.tableOIDs == nil {
				m.tableOIDs = make(map[uint32]string)
			}
			m.tableOIDs[ts.OID] = name
		}
	}
	m.mu.Unlock()
	generated := make(map[string][]string, len(tables))
	for name, ts := range tables {
		if len(ts.Generated) > 0 && len(m.byTable[name]) > 0 {
			generated[name] = ts.Generated
		}
	}
	m.generated.Store(&generated)
	m.markImplicit(tables)
	var errs errorList
	for _, r := range m.rules {
		ts, ok := tables[r.qualified]
		if !ok {
			errs.add(r.Where, "table", r.Event, ErrUnknownTable, "table %s does not exist (or is not readable)", r.qualified)
			continue
		}
		if g := generatedRead(r, ts.Generated); g != "" {
			errs.add(r.Where, "table", r.Event, ErrGeneratedColumn, "column %q of %s is a generated column, which logical replication "+
				"(PostgreSQL 15) does not send; read the columns it is computed from instead", g, r.qualified)
			continue
		}
		rel := &cdc.Relation{Schema: r.schema, Name: r.table, ReplicaIdentity: ts.ReplicaIdentity}
		for _, c := range ts.Columns {
			rel.Columns = append(rel.Columns, cdc.Column{Name: c, Key: contains(ts.Keys, c)})
		}
		n := len(errs)
		m.resolve(r, rel, &errs)
		if len(errs) == n {
			checkWhenTypes(r, ts, &errs)
		}
		if len(errs) == n {
			checkWhenEnums(r, ts, &errs)
		}
	}
	return errs.err()
}

// generatedRead returns the first of generated that r names, or "".
func generatedRead(r *compiledRule, generated []string) string {
	found := ""
	r.columns(false, func(n string) {
		if found == "" && contains(generated, n) {
			found = n
		}
	})
	return found
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// resolve binds a rule to the columns of rel, reporting unknown columns and
// old-value reads the table's replica identity cannot serve.
func (m *Mapper) resolve(r *compiledRule, rel *cdc.Relation, errs *errorList) *rulePlan {
	n := len(*errs)
	rp := &rulePlan{r: r, auction: colSrc{idx: -1}, domain: colSrc{idx: -1}}
	reported := map[string]bool{}
	var generated []string
	if g := m.generated.Load(); g != nil {
		generated = (*g)[rel.Table()]
	}
	missing := func(where, field, name string) {
		if contains(generated, name) {
			errs.add(where, field, r.Event, ErrGeneratedColumn, "column %q of %s is a generated column, which logical replication "+
				"(PostgreSQL 15) does not send; read the columns it is computed from instead", name, rel.Table())
			return
		}
		errs.add(where, field, r.Event, ErrUnknownColumn, "column %q does not exist in %s", name, rel.Table())
	}
	col := func(field, name string, from byte) colSrc {
		i := rel.ColumnIndex(name)
		if i < 0 && !reported[field+"\x00"+name] {
			reported[field+"\x00"+name] = true
			missing(r.Where, field, name)
		}
		return colSrc{idx: i, from: from, name: name}
	}
	for _, c := range r.Changed {
		rp.changed = append(rp.changed, col("changed", c, fromOld).idx)
	}
	for _, c := range r.whenOld {
		src := col("when", c, fromOld)
		src.envKey = "old." + c
		rp.whenOld = append(rp.whenOld, src)
	}
	for _, c := range r.whenNew {
		src := col("when", c, fromNew)
		src.envKey = "new." + c
		rp.whenNew = append(rp.whenNew, src)
	}
	if r.auctionSet {
		rp.auction = col("auction_id", r.auction.name, fromByte(r.auction.from))
	} else if i := rel.ColumnIndex("auction_id"); i >= 0 {
		rp.auction = colSrc{idx: i, from: fromDef, name: "auction_id"}
	} else if m.hadImplicit(rel.Table(), "auction_id") {
		errs.add(r.Where, "", r.Event, ErrUnknownColumn, "column \"auction_id\" of %s, which this rule's events take their auction_id "+
			"from (it has no auction_id:), does not exist any more (renamed or dropped): their auction_id would be null from now on, "+
			"and endpoints subscribed to given auctions would get none of them; name the column that holds the auction id with "+
			"auction_id: (or add the column back)", rel.Table())
	}
	if r.envelope == EnvelopeSNS {
		if r.domainSet {
			rp.domain = col("domain", r.domain.name, fromByte(r.domain.from))
		} else if i := rel.ColumnIndex("domain"); i >= 0 && r.domainConst == "" {
			rp.domain = colSrc{idx: i, from: fromDef, name: "domain"}
		} else if r.domainConst == "" && m.hadImplicit(rel.Table(), "domain") {
			errs.add(r.Where, "", r.Event, ErrUnknownColumn, "column \"domain\" of %s, which this rule's events take their domain "+
				"from (it has no domain: and mapping.domain is not set), does not exist any more (renamed or dropped): their domain "+
				"would be null from now on; name the column that holds it with domain: (or add the column back)", rel.Table())
		}
	}
	if len(r.Data) == 0 {
		for i, c := range rel.Columns {
			rp.data = append(rp.data, dataPlan{key: jsonKey(c.Name), col: colSrc{idx: i, from: fromDef, name: c.Name}})
		}
	}
	for j, f := range r.Data {
		dp := dataPlan{key: jsonKey(f.Key), col: colSrc{idx: -1}}
		if f.IsConst {
			dp.konst = appendValue(nil, f.Const)
		} else {
			where, field := r.Where, fmt.Sprintf("data[%d]", j)
			if f.Where != "" {
				where, field = f.Where, ""
			}
			i := rel.ColumnIndex(f.Column)
			if i < 0 {
				missing(where, field, f.Column)
			}
			dp.col = colSrc{idx: i, from: fromByte(f.From), name: f.Column}
		}
		rp.data = append(rp.data, dp)
	}
	// Also with a missing column: one check names every problem of the
	// rule, not the next one only after the first is fixed.
	m.checkOldValues(rp, rel, errs)
	if len(*errs) > n {
		return nil
	}
	if r.when != nil {
		rp.env = make(map[string]any, 3+len(rp.whenOld)+len(rp.whenNew))
		rp.env["op"] = ""
		for _, c := range rp.whenOld {
			rp.env[c.envKey] = nil
		}
		for _, c := range rp.whenNew {
			rp.env[c.envKey] = nil
		}
	}
	return rp
}

func fromByte(from string) byte {
	switch from {
	case "old":
		return fromOld
	case "new":
		return fromNew
	}
	return fromDef
}

// checkOldValues refuses rules that read old values the table does not
// send. pgoutput sends the old row for an UPDATE only under REPLICA
// IDENTITY FULL (DEFAULT and USING INDEX send the old key, and only when a
// key column changed); for a DELETE, DEFAULT sends the key columns only.
func (m *Mapper) checkOldValues(rp *rulePlan, rel *cdc.Relation, errs *errorList) {
	r := rp.r
	if rel.ReplicaIdentity == 'f' {
		rp.needsOld = r.has(cdc.OpUpdate) && readsOld(rp, cdc.OpUpdate, rel, true)
		return
	}
	var reads []string
	if r.has(cdc.OpUpdate) {
		rp.needsOld = readsOld(rp, cdc.OpUpdate, rel, true)
		if rp.needsOld {
			reads = append(reads, oldReads(rp, cdc.OpUpdate, rel, true)...)
		}
	}
	if r.has(cdc.OpDelete) && readsOld(rp, cdc.OpDelete, rel, false) {
		reads = append(reads, oldReads(rp, cdc.OpDelete, rel, false)...)
	}
	if len(reads) == 0 {
		return
	}
	sort.Strings(reads)
	reads = dedupe(reads)
	errs.add(r.Where, "", r.Event, ErrNeedsOldValues,
		"reads old values (%s) but %s has REPLICA IDENTITY %s, which does not send them; run: ALTER TABLE %s REPLICA IDENTITY FULL;",
		strings.Join(reads, ", "), rel.Table(), identityName(rel.ReplicaIdentity), quoteTable(rel.Schema, rel.Name))
}

func readsOld(rp *rulePlan, op cdc.Op, rel *cdc.Relation, keysToo bool) bool {
	return len(oldReads(rp, op, rel, keysToo)) > 0
}

// oldReads lists what the rule reads from the old row for op, as
// "changed: status", "when: deleted_at", "data: title", … Key columns count
// only when keysToo (updates: the old key is sent only when it changed).
func oldReads(rp *rulePlan, op cdc.Op, rel *cdc.Relation, keysToo bool) []string {
	var out []string
	add := func(kind string, idx int, name string) {
		if idx < 0 { // a column that does not exist: reported as that
			return
		}
		if !keysToo && rel.Columns[idx].Key {
			return
		}
		out = append(out, kind+": "+name)
	}
	if op == cdc.OpUpdate {
		for i, c := range rp.r.Changed {
			add("changed", rp.changed[i], c)
		}
	}
	for _, c := range rp.whenOld {
		add("when", c.idx, c.name)
	}
	if rp.r.whenWholeOld {
		out = append(out, "when: old")
	}
	isOld := func(from byte) bool { return from == fromOld || (from == fromDef && op == cdc.OpDelete) }
	for _, d := range rp.data {
		if d.col.idx >= 0 && isOld(d.col.from) {
			add("data", d.col.idx, d.col.name)
		}
	}
	if rp.auction.idx >= 0 && isOld(rp.auction.from) {
		add("auction_id", rp.auction.idx, rp.auction.name)
	}
	if rp.domain.idx >= 0 && isOld(rp.domain.from) {
		add("domain", rp.domain.idx, rp.domain.name)
	}
	return out
}

func dedupe(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

func identityName(b byte) string {
	switch b {
	case 'd':
		return "DEFAULT"
	case 'f':
		return "FULL"
	case 'i':
		return "USING INDEX"
	case 'n':
		return "NOTHING"
	}
	return fmt.Sprintf("%q", b)
}

// quoteTable renders schema.table for SQL, quoting only names that need it.
func quoteTable(schema, table string) string {
	return quoteIdent(schema) + "." + quoteIdent(table)
}

func quoteIdent(s string) string {
	plain := s != ""
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || i > 0 && (c >= '0' && c <= '9' || c == '$')) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func jsonKey(k string) []byte {
	b := appendJSONString(nil, k)
	return append(b, ':')
}

// UnsentDefaults lists the rules whose envelope takes a field from a
// column by its name — auction_id without `auction_id:`, the sns domain
// without `domain:` or mapping.domain — where that column of the table is
// a generated one: logical replication (PostgreSQL 15) does not send
// generated columns, so the field is null in every event of the rule, and
// endpoints subscribed to given auctions get none of them. Not an error
// (the column may hold nothing else), but worth saying where a rule that
// names a generated column is refused. tables are as for CheckSchema.
//
// It also lists the update rules on a partitioned table whose changed: or
// when: reads a partition key column: an UPDATE that changes the key so
// that the row moves to another partition is not sent as an UPDATE but as
// a DELETE and an INSERT, so such a rule misses exactly the changes it
// looks for, and the table's delete and insert rules fire for them.
func (m *Mapper) UnsentDefaults(tables map[string]TableSchema) []string {
	var out []string
	for _, r := range m.rules {
		ts, ok := tables[r.qualified]
		if !ok {
			continue
		}
		if r.has(cdc.OpUpdate) && len(ts.PartitionKeys) > 0 {
			var keys []string
			for _, c := range append(append(append([]string(nil), r.Changed...), r.whenOld...), r.whenNew...) {
				if contains(ts.PartitionKeys, c) && !contains(keys, c) {
					keys = append(keys, c)
				}
			}
			if len(keys) > 0 {
				out = append(out, fmt.Sprintf("%s: event %s: reads %s, a partition key of %s: an UPDATE that changes it so that the row "+
					"moves to another partition reaches walhook as a DELETE and an INSERT (PostgreSQL's logical replication), so this rule "+
					"does not see it, and the table's delete and insert rules fire for it; map such moves with delete and insert rules, "+
					"or keep the key unchanged", r.Where, r.Event, strings.Join(keys, ", "), r.qualified))
			}
		}
		if !r.auctionSet && contains(ts.Generated, "auction_id") {
			out = append(out, fmt.Sprintf("%s: event %s: column \"auction_id\" of %s is a generated column, which logical replication "+
				"(PostgreSQL 15) does not send, so the events' auction_id is null and endpoints subscribed to given auctions get none of them; "+
				"name a column that holds the auction id with auction_id:", r.Where, r.Event, r.qualified))
		}
		if r.envelope == EnvelopeSNS && !r.domainSet && r.domainConst == "" && contains(ts.Generated, "domain") {
			out = append(out, fmt.Sprintf("%s: event %s: column \"domain\" of %s is a generated column, which logical replication "+
				"(PostgreSQL 15) does not send, so the events' domain is null; name a column with domain:, or set mapping.domain", r.Where, r.Event, r.qualified))
		}
	}
	return out
}

// markImplicit records in m.implicit the auction_id and domain columns of
// tables that rules take those fields from without naming them.
func (m *Mapper) markImplicit(tables map[string]TableSchema) {
	old := m.implicit.Load()
	next := map[string]bool{}
	if old != nil {
		for k := range *old {
			next[k] = true
		}
	}
	for _, r := range m.rules {
		ts, ok := tables[r.qualified]
		if !ok {
			continue
		}
		if !r.auctionSet && contains(ts.Columns, "auction_id") {
			next[r.qualified+"\x00auction_id"] = true
		}
		if r.envelope == EnvelopeSNS && !r.domainSet && r.domainConst == "" && contains(ts.Columns, "domain") {
			next[r.qualified+"\x00domain"] = true
		}
	}
	m.implicit.Store(&next)
}

// hadImplicit reports whether markImplicit recorded column of table.
func (m *Mapper) hadImplicit(table, column string) bool {
	p := m.implicit.Load()
	return p != nil && (*p)[table+"\x00"+column]
}
