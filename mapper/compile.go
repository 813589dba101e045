package mapper

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/parser"
	"github.com/expr-lang/expr/vm"

	"github.com/walhook/walhook/cdc"
)

// Mapper holds compiled rules and maps transactions to events. It is safe
// for concurrent use, but is meant to be driven by the one goroutine that
// consumes the replication stream.
type Mapper struct {
	opts    Options
	log     *slog.Logger
	rules   []*compiledRule
	byTable map[string][]*compiledRule

	mu sync.Mutex
	// plans caches the resolved per-table plan by relation OID; a plan is
	// valid for exactly one *cdc.Relation (cdc makes a new one for every
	// Relation message, i.e. after DDL or a reconnect), so a new pointer
	// means column positions are resolved again. Keyed by OID, not by
	// pointer, so the cache stays bounded by the number of tables.
	plans map[uint32]*tablePlan
	// tableOIDs maps the OIDs of the rule tables, as the live schema had
	// them at startup (CheckSchema), to their names: a change announced
	// under another name for one of them is a rename, even in a process
	// that never saw the old name.
	tableOIDs map[uint32]string
	// generated holds, per rule table, its generated columns as the last
	// CheckSchema saw them (at startup, then run's periodic check): a
	// column made generated while walhook runs is missing from the
	// Relation messages, and the stop says why rather than "does not
	// exist".
	generated atomic.Pointer[map[string][]string]
	// implicit holds "schema.table\x00column" for the auction_id and
	// domain columns a CheckSchema of this process saw in a rule table
	// whose rules take the envelope's auction_id (domain) from them
	// without naming them. Never cleared: such a column renamed or
	// dropped while walhook runs would make those fields null from then
	// on, silently, so the change that arrives without it stops the run.
	implicit atomic.Pointer[map[string]bool]
	stats    Stats
	// epoch is the store's id epoch (SetIDEpoch).
	epoch atomic.Pointer[idEpoch]
	// legacyIDs is the commit LSN of a transaction that keeps unordered
	// ids (SetLegacyIDs); 0 for none.
	legacyIDs atomic.Uint64
}

// idEpoch is an id epoch and the commit position from which it applies.
type idEpoch struct {
	n    uint32
	from cdc.LSN
}

// colRef names a column of the old or the new row.
type colRef struct {
	name string
	// from is "new", "old" or "" (the new row, or the old row for deletes).
	from string
}

// compiledRule is a Rule after the checks that need no schema.
type compiledRule struct {
	Rule
	index     int
	schema    string
	table     string
	qualified string
	ops       uint8 // bit 1<<cdc.Op
	envelope  Envelope

	when *vm.Program
	// whenOld / whenNew: the columns the expression reads from old / new.
	whenOld, whenNew []string
	// whenWhole*: the expression uses old/new other than by constant member
	// access (e.g. new[name]), so the env gets the whole row.
	whenWholeOld, whenWholeNew bool

	auction     colRef
	auctionSet  bool
	domain      colRef
	domainSet   bool
	domainConst string
}

func (r *compiledRule) has(op cdc.Op) bool { return r.ops&(1<<op) != 0 }

// routing is where the rule's events for op take their auction id and
// domain from: the column and the row (a rule that names none reads the
// columns of those names, from the new row or, for deletes, the old).
// Two rules of one event that differ in it send one change's event to
// different auctions' (or domains') endpoints.
func (r *compiledRule) routing(op cdc.Op) [2]colRef {
	at := func(c colRef) colRef {
		if c.from == "" {
			c.from = "new"
			if op == cdc.OpDelete {
				c.from = "old"
			}
		}
		return c
	}
	auction, domain := colRef{name: "auction_id"}, colRef{name: "domain"}
	if r.auctionSet {
		auction = r.auction
	}
	if r.domainSet && r.envelope == EnvelopeSNS {
		domain = r.domain
	}
	return [2]colRef{at(auction), at(domain)}
}

// sameEventTwice returns the operations of ops on which rules a and b,
// of one event type and table, may produce that event twice for one
// change: those on which they do not route it apart. Two routings that
// differ only in the row of one column (old.auction_id, new.auction_id)
// are apart on updates only when one rule fires on changes of that
// column alone (changed: [auction_id]): on other updates the old and
// new values are one value.
func sameEventTwice(a, b *compiledRule, ops uint8) uint8 {
	var out uint8
	for _, op := range []cdc.Op{cdc.OpInsert, cdc.OpUpdate, cdc.OpDelete} {
		if ops&(1<<op) == 0 {
			continue
		}
		ra, rb := a.routing(op), b.routing(op)
		apart := false
		for i := range ra {
			switch {
			case ra[i].name != rb[i].name:
				apart = true
			case ra[i].from != rb[i].from:
				only := func(r *compiledRule) bool { return len(r.Changed) == 1 && r.Changed[0] == ra[i].name }
				apart = apart || op != cdc.OpUpdate || only(a) || only(b)
			}
		}
		if !apart {
			out |= 1 << op
		}
	}
	return out
}

// columns calls fn with every column the rule names, in rule order:
// changed, when's old and new columns, data, auction id, domain. With
// newOnly it leaves out changed and when's old columns (what an update
// rule reads from the new row alone).
func (r *compiledRule) columns(newOnly bool, fn func(string)) {
	if !newOnly {
		for _, c := range r.Changed {
			fn(c)
		}
		for _, c := range r.whenOld {
			fn(c)
		}
	}
	for _, c := range r.whenNew {
		fn(c)
	}
	for _, f := range r.Data {
		if !f.IsConst {
			fn(f.Column)
		}
	}
	if r.auctionSet {
		fn(r.auction.name)
	}
	if r.domainSet {
		fn(r.domain.name)
	}
}

// exprEnv is the type environment expressions are checked against: old and
// new are maps, so member access type-checks as "any" and comparisons of
// mismatched literal types (`new.status == "a" && 1`) are caught at load.
var exprEnv = map[string]any{
	"old": map[string]any{},
	"new": map[string]any{},
	"op":  "",
}

// Compile checks and compiles rules. Every problem is reported, each with
// its rule's Where; the errors are *RuleError values joined with
// errors.Join.
func Compile(rules []Rule, opts Options) (*Mapper, error) {
	if opts.Envelope == "" {
		opts.Envelope = EnvelopeAuctionExcellence
	}
	m := &Mapper{
		opts:    opts,
		log:     opts.Logger,
		byTable: make(map[string][]*compiledRule),
		plans:   make(map[uint32]*tablePlan),
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	var errs errorList
	if !opts.Envelope.Valid() {
		errs.add("", "envelope", "", ErrInvalidRule, "unknown envelope %q (want auction-excellence or sns)", opts.Envelope)
	}
	firstByEvent := make(map[string]*compiledRule)
	for i := range rules {
		cr := compileRule(i, rules[i], opts, &errs)
		if cr == nil {
			continue
		}
		if prev, ok := firstByEvent[cr.Event]; ok {
			if prev.envelope != cr.envelope {
				errs.add(cr.Where, "envelope", cr.Event, ErrConflict,
					"envelope %s differs from %s given to the same event at %s; one event type has one body shape",
					cr.envelope, prev.envelope, prev.Where)
			} else if a, b := shapeOf(prev), shapeOf(cr); a != b {
				errs.add(cr.Where, "data", cr.Event, ErrConflict,
					"data has %s, but the same event has %s at %s; one event type has one body shape",
					b, a, prev.Where)
			}
		} else {
			firstByEvent[cr.Event] = cr
		}
		for _, o := range m.byTable[cr.qualified] {
			// Both fire for some change (an update of a column in each
			// changed:, any insert or delete): the event would be
			// produced twice, under two ids. Not so when they route it
			// apart (auction_id: old.auction_id and new.auction_id: a
			// lot moved from one auction to another, told to both).
			if common := sameEventTwice(o, cr, o.ops&cr.ops); o.Event == cr.Event && o.When == "" && cr.When == "" && common != 0 {
				errs.add(cr.Where, "", cr.Event, ErrConflict,
					"fires on %s of %s like the rule at %s, and neither has a when:, so a change both match produces %s twice; "+
						"list the columns in one rule's changed:, or tell the rules apart with when:",
					opList(common), cr.qualified, o.Where, cr.Event)
				break
			}
		}
		m.rules = append(m.rules, cr)
		m.byTable[cr.qualified] = append(m.byTable[cr.qualified], cr)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return m, nil
}

// opList names the operations of the bit set ops (1<<cdc.Op), as
// "insert and update".
func opList(ops uint8) string {
	var names []string
	for _, op := range []cdc.Op{cdc.OpInsert, cdc.OpUpdate, cdc.OpDelete} {
		if ops&(1<<op) != 0 {
			names = append(names, op.String())
		}
	}
	return strings.Join(names, " and ")
}

func compileRule(i int, r Rule, opts Options, errs *errorList) *compiledRule {
	n := len(*errs)
	cr := &compiledRule{Rule: r, index: i, envelope: r.Envelope}
	if cr.envelope == "" {
		cr.envelope = opts.Envelope
	}
	if r.Event == "" {
		errs.add(r.Where, "event", "", ErrInvalidRule, "is required")
	}
	if !cr.envelope.Valid() {
		errs.add(r.Where, "envelope", r.Event, ErrInvalidRule, "unknown envelope %q (want auction-excellence or sns)", cr.envelope)
	}
	cr.schema, cr.table = splitTable(r.Table)
	if cr.table == "" {
		errs.add(r.Where, "table", r.Event, ErrInvalidRule, "is required")
	}
	cr.qualified = cr.schema + "." + cr.table
	if len(r.Ops) == 0 {
		errs.add(r.Where, "operations", r.Event, ErrInvalidRule, "at least one of insert, update, delete is required")
	}
	for _, op := range r.Ops {
		if op != cdc.OpInsert && op != cdc.OpUpdate && op != cdc.OpDelete {
			errs.add(r.Where, "operations", r.Event, ErrInvalidRule, "%s: rules fire on insert, update or delete only", op)
			continue
		}
		cr.ops |= 1 << op
	}
	if len(r.Changed) > 0 && !cr.has(cdc.OpUpdate) {
		errs.add(r.Where, "changed", r.Event, ErrInvalidRule, "applies to updates only, but operations do not include update")
	}
	for _, c := range r.Changed {
		if c == "" {
			errs.add(r.Where, "changed", r.Event, ErrInvalidRule, "empty column name")
		}
	}
	if r.When != "" {
		compileWhen(cr, errs)
	}
	cr.auction, cr.auctionSet = parseColRef(r.AuctionID, "auction_id", cr, errs)
	cr.domain, cr.domainSet = parseColRef(r.Domain, "domain", cr, errs)
	if !cr.domainSet {
		cr.domainConst = opts.Domain
	}
	seen := make(map[string]bool, len(r.Data))
	for j, f := range r.Data {
		where, field := r.Where, fmt.Sprintf("data[%d]", j)
		if f.Where != "" {
			where, field = f.Where, ""
		}
		switch {
		case f.Key == "":
			errs.add(where, field, r.Event, ErrInvalidRule, "empty key")
		case seen[f.Key]:
			errs.add(where, field, r.Event, ErrInvalidRule, "duplicate key %q", f.Key)
		}
		seen[f.Key] = true
		if f.IsConst {
			continue
		}
		if f.Column == "" {
			errs.add(where, field, r.Event, ErrInvalidRule, "key %q names no column", f.Key)
		}
		checkFrom(f.From, where, field, cr, errs)
	}
	if len(*errs) > n {
		return nil
	}
	return cr
}

// shapeOf describes a rule's data object for the one-shape-per-event check:
// its keys in order, or the whole row of its table.
func shapeOf(r *compiledRule) string {
	if len(r.Data) == 0 {
		return "(the whole row of " + r.qualified + ")"
	}
	keys := make([]string, len(r.Data))
	for i, f := range r.Data {
		keys[i] = f.Key
	}
	return "keys (" + strings.Join(keys, ", ") + ")"
}

// checkFrom refuses "old" on insert-only and "new" on delete-only rules:
// those rows never exist there.
func checkFrom(from, where, field string, cr *compiledRule, errs *errorList) {
	switch from {
	case "", "new", "old":
	default:
		errs.add(where, field, cr.Event, ErrInvalidRule, "row %q: want old or new", from)
		return
	}
	if from == "old" && !cr.has(cdc.OpUpdate) && !cr.has(cdc.OpDelete) {
		errs.add(where, field, cr.Event, ErrInvalidRule, "reads the old row, but inserts have none")
	}
	if from == "new" && !cr.has(cdc.OpUpdate) && !cr.has(cdc.OpInsert) {
		errs.add(where, field, cr.Event, ErrInvalidRule, "reads the new row, but deletes have none")
	}
}

// parseColRef reads "col", "new.col" or "old.col".
func parseColRef(s, field string, cr *compiledRule, errs *errorList) (colRef, bool) {
	if s == "" {
		return colRef{}, false
	}
	ref := colRef{name: s}
	if from, name, ok := strings.Cut(s, "."); ok && (from == "old" || from == "new") {
		ref = colRef{name: name, from: from}
	}
	if ref.name == "" {
		errs.add(cr.Where, field, cr.Event, ErrInvalidRule, "%q names no column", s)
	}
	checkFrom(ref.from, cr.Where, field, cr, errs)
	return ref, true
}

// splitTable turns "table" into ("public", "table"): unqualified names mean
// schema public, as for a client with the default search_path.
func splitTable(t string) (schema, table string) {
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}

// whenWhere is where errors about the rule's when: point, and the field
// to name after it.
func (r *Rule) whenWhere() (where, field string) {
	if r.WhenWhere != "" {
		return r.WhenWhere, ""
	}
	return r.Where, "when"
}

func compileWhen(cr *compiledRule, errs *errorList) {
	// Checked as written (expr's own %, so a % of a string or a
	// non-boolean result is refused here); the program that runs has %
	// as __mod (modToFunc).
	prog, err := expr.Compile(cr.When, expr.Env(exprEnv), expr.AsBool())
	if err != nil && numericModMismatch(err) {
		// expr's % refuses a float it can see (4.5 % 2, x % 2.5); __mod
		// takes it, so check it that way.
		prog, err = expr.Compile(cr.When, expr.Env(exprEnv), expr.AsBool(), modFunc, expr.Patch(modToFunc{}))
	}
	if err != nil {
		where, field := cr.whenWhere()
		errs.add(where, field, cr.Event, ErrExpression, "%s", strings.TrimSpace(err.Error()))
		return
	}
	tree, err := parser.Parse(cr.When)
	if err != nil { // compiled above, so this does not happen
		where, field := cr.whenWhere()
		errs.add(where, field, cr.Event, ErrExpression, "%s", err.Error())
		return
	}
	v := &refCollector{}
	ast.Walk(&tree.Node, v)
	cr.when = prog
	// The program that runs reads old.x and new.x as the flat env keys
	// "old.x" / "new.x": expr fetches map members through reflection,
	// which allocates, while a top-level key of a map env is a plain map
	// read. The expression was checked above; this compile only rewrites.
	if fast, err := expr.Compile(cr.When, expr.Env(exprEnv), expr.AllowUndefinedVariables(), modFunc,
		expr.Patch(modToFunc{}), expr.Patch(flattenMembers{})); err == nil {
		cr.when = fast
	}
	cr.whenOld, cr.whenNew = v.cols["old"], v.cols["new"]
	cr.whenWholeOld = v.idents["old"] > v.members["old"]+v.nilCmp["old"]
	cr.whenWholeNew = v.idents["new"] > v.members["new"]+v.nilCmp["new"]
	if !cr.has(cdc.OpUpdate) && !cr.has(cdc.OpDelete) && readsUnguarded(tree, "old") {
		// old is nil for inserts: old.x is nil, which is legal but
		// almost certainly a mistake worth reporting (not where old is
		// read only behind ?? or a test false for inserts: a when:
		// shared with the table's update rules).
		errs.add(cr.Where, "when", cr.Event, ErrExpression, "reads old, but the rule fires on inserts only, where old is nil")
	}
	for _, o := range v.opValues {
		if o != "insert" && o != "update" && o != "delete" {
			// op is always one of the three: the comparison has one
			// answer on every row.
			errs.add(cr.Where, "when", cr.Event, ErrExpression, "compares op with %q, which op never is: it is \"insert\", \"update\" or \"delete\" (lowercase)", o)
			break
		}
	}
	if !cr.has(cdc.OpInsert) && !cr.has(cdc.OpUpdate) && readsUnguarded(tree, "new") {
		// new is nil for deletes: new.x is nil, so the expression is
		// false or unknown on every row and the rule never fires.
		errs.add(cr.Where, "when", cr.Event, ErrExpression, "reads new, but the rule fires on deletes only, where new is nil; "+
			"read the deleted row as old (old.x)")
	}
}

// readsUnguarded reports whether the expression reads row ("new" or
// "old") where a change of the operation that lacks it (a delete for new,
// an insert for old) would: not on the left of ?? (new ?? old, new?.x ??
// old.x: there the fallback is what is read), not in a nil comparison of
// the row itself, and not behind a test that is false for that operation
// (op != "delete" && new.x, op == "delete" ? old.x : new.x, new == nil ||
// new.x): one when: shared by a table's rules of several operations.
func readsUnguarded(tree *parser.Tree, row string) bool {
	without := "delete"
	if row == "old" {
		without = "insert"
	}
	all, guarded := identsOf{row: row, s: map[*ast.IdentifierNode]bool{}}, identsOf{row: row, s: map[*ast.IdentifierNode]bool{}}
	ast.Walk(&tree.Node, all)
	ast.Walk(&tree.Node, rowGuards{guarded, without})
	for id := range all.s {
		if !guarded.s[id] {
			return true
		}
	}
	return false
}

// identsOf collects the identifiers row of what it walks.
type identsOf struct {
	row string
	s   map[*ast.IdentifierNode]bool
}

func (o identsOf) Visit(node *ast.Node) {
	if id, ok := (*node).(*ast.IdentifierNode); ok && id.Value == o.row {
		o.s[id] = true
	}
}

// rowGuards collects the identifiers row that the operation without it
// (op: its nil row) does not make meaningless: on the left of ??,
// compared with nil, or behind a test that is false for that operation
// (notOn).
type rowGuards struct {
	s  identsOf
	op string
}

func (g rowGuards) Visit(node *ast.Node) {
	if c, ok := (*node).(*ast.ConditionalNode); ok {
		switch {
		case notOn(c.Cond, true, g.s.row, g.op):
			ast.Walk(&c.Exp1, g.s)
		case notOn(c.Cond, false, g.s.row, g.op):
			ast.Walk(&c.Exp2, g.s)
		}
		return
	}
	b, ok := (*node).(*ast.BinaryNode)
	if !ok {
		return
	}
	switch b.Operator {
	case "&&", "and":
		if notOn(b.Left, true, g.s.row, g.op) {
			ast.Walk(&b.Right, g.s)
		}
	case "||", "or":
		if notOn(b.Left, false, g.s.row, g.op) {
			ast.Walk(&b.Right, g.s)
		}
	case "??":
		ast.Walk(&b.Left, g.s)
	case "==", "!=":
		_, lnil := b.Left.(*ast.NilNode)
		_, rnil := b.Right.(*ast.NilNode)
		if rnil {
			g.s.Visit(&b.Left)
		}
		if lnil {
			g.s.Visit(&b.Right)
		}
	}
}

// notOn reports whether n is a test whose value on every change of
// operation op (the one without row) is !holds: with holds, one true for
// the other operations only (op != "delete", op == "update", new != nil
// for op delete and row new); without, one true on op's changes
// (op == "delete", new == nil).
func notOn(n ast.Node, holds bool, row, op string) bool {
	b, ok := n.(*ast.BinaryNode)
	if !ok {
		return false
	}
	if b.Operator == "&&" || b.Operator == "and" {
		return holds && (notOn(b.Left, true, row, op) || notOn(b.Right, true, row, op))
	}
	if b.Operator != "==" && b.Operator != "!=" {
		return false
	}
	x, y := b.Left, b.Right
	if _, isID := y.(*ast.IdentifierNode); isID {
		x, y = y, x
	}
	id, ok := x.(*ast.IdentifierNode)
	if !ok {
		return false
	}
	eq := b.Operator == "=="
	switch v := y.(type) {
	case *ast.StringNode:
		if id.Value != "op" {
			return false
		}
		if v.Value == op {
			return eq != holds // op != "delete" holds off deletes; op == "delete" on them
		}
		return eq && holds // op == "update"
	case *ast.NilNode:
		return id.Value == row && eq != holds // new != nil; new == nil
	}
	return false
}

// modToFunc rewrites a % b into __mod(a, b): expr's % takes integers
// only, and a numeric column's value is a float when it has a fraction
// (or is beyond int64), a json number always, so `new.qty % 2` would stop
// the run at the first such row; SQL's % works on numeric.
type modToFunc struct{}

func (modToFunc) Visit(node *ast.Node) {
	if b, ok := (*node).(*ast.BinaryNode); ok && b.Operator == "%" {
		ast.Patch(node, &ast.CallNode{Callee: &ast.IdentifierNode{Value: "__mod"}, Arguments: []ast.Node{b.Left, b.Right}})
	}
}

// modFunc is __mod: the integer remainder of two integers (by zero an
// error, as in SQL), else the float one (math.Mod). A nil operand fails
// with "<nil>" in the message, which nilOperand takes for unknown.
var modFunc = expr.Function("__mod", func(params ...any) (any, error) {
	a, b := params[0], params[1]
	if a == nil || b == nil {
		return nil, fmt.Errorf("invalid operation: %% on <nil>")
	}
	ai, aok := a.(int64)
	bi, bok := b.(int64)
	// A whole numeric beyond int64 arrives as a float64 that is no
	// longer exact: its remainder would be wrong, silently.
	for _, v := range params {
		if f, ok := v.(float64); ok && math.Abs(f) >= 1<<53 && !math.IsInf(f, 0) {
			return nil, fmt.Errorf("invalid operation: %% of %v, beyond the numbers a float64 holds exactly", f)
		}
	}
	if x, ok := a.(int); ok {
		ai, aok = int64(x), true
	}
	if x, ok := b.(int); ok {
		bi, bok = int64(x), true
	}
	if aok && bok {
		if bi == 0 {
			return nil, errors.New("integer divide by zero")
		}
		if _, isInt := a.(int); isInt {
			if _, isInt := b.(int); isInt {
				return int(ai % bi), nil
			}
		}
		return ai % bi, nil
	}
	af, aok := toFloat(a)
	bf, bok := toFloat(b)
	if !aok || !bok {
		return nil, fmt.Errorf("invalid operation: %T %% %T", a, b)
	}
	return math.Mod(af, bf), nil
})

// modMismatchRE reads the operand types of expr's refusal of a %.
var modMismatchRE = regexp.MustCompile(`invalid operation: % \(mismatched types ([^()]+?) and ([^()]+)\)`)

// numericModMismatch reports whether err is expr refusing a % only because
// an operand is (or may be) a float, which __mod computes; a % of a
// string or a bool stays refused.
func numericModMismatch(err error) bool {
	m := modMismatchRE.FindStringSubmatch(err.Error())
	if m == nil {
		return false
	}
	numeric := func(t string) bool {
		switch t {
		case "int", "int64", "float64", "interface {}":
			return true
		}
		return false
	}
	return numeric(m[1]) && numeric(m[2])
}

// toFloat reads a number of any of expr's numeric types.
func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case float64:
		return x, true
	case int32:
		return float64(x), true
	case float32:
		return float64(x), true
	}
	return 0, false
}

// flattenMembers rewrites old.x and new["x"] into the identifiers "old.x"
// and "new.x" (a name no user identifier can have).
type flattenMembers struct{}

func (flattenMembers) Visit(node *ast.Node) {
	n, ok := (*node).(*ast.MemberNode)
	if !ok || n.Method {
		return
	}
	id, ok := n.Node.(*ast.IdentifierNode)
	if !ok || (id.Value != "old" && id.Value != "new") {
		return
	}
	if s, ok := n.Property.(*ast.StringNode); ok {
		ast.Patch(node, &ast.IdentifierNode{Value: id.Value + "." + s.Value})
	}
}

// refCollector finds the columns an expression reads: old.x, new["x"].
// Uses of old/new that are neither constant member access nor a nil
// comparison make the env carry the whole row.
type refCollector struct {
	cols    map[string][]string
	idents  map[string]int
	members map[string]int
	nilCmp  map[string]int
	// opValues are the string literals op is compared with (==, !=, in).
	opValues []string
}

func (v *refCollector) Visit(node *ast.Node) {
	if v.cols == nil {
		v.cols = map[string][]string{}
		v.idents = map[string]int{}
		v.members = map[string]int{}
		v.nilCmp = map[string]int{}
	}
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		v.idents[n.Value]++
	case *ast.MemberNode:
		id, ok := n.Node.(*ast.IdentifierNode)
		if !ok {
			return
		}
		if s, ok := n.Property.(*ast.StringNode); ok && (id.Value == "old" || id.Value == "new") {
			v.members[id.Value]++
			for _, c := range v.cols[id.Value] {
				if c == s.Value {
					return
				}
			}
			v.cols[id.Value] = append(v.cols[id.Value], s.Value)
		}
	case *ast.BinaryNode:
		v.opLiterals(n)
		if n.Operator != "==" && n.Operator != "!=" {
			return
		}
		l, lok := n.Left.(*ast.IdentifierNode)
		r, rok := n.Right.(*ast.IdentifierNode)
		_, lnil := n.Left.(*ast.NilNode)
		_, rnil := n.Right.(*ast.NilNode)
		if lok && rnil {
			v.nilCmp[l.Value]++
		}
		if rok && lnil {
			v.nilCmp[r.Value]++
		}
	}
}

// Events returns the event catalog: each event type once, in rule order.
func (m *Mapper) Events() []EventType {
	var out []EventType
	seen := make(map[string]bool)
	for _, r := range m.rules {
		if seen[r.Event] {
			continue
		}
		seen[r.Event] = true
		out = append(out, EventType{Type: r.Event, Description: r.Description, Envelope: r.envelope})
	}
	return out
}

// Tables returns the qualified names of the tables rules read, sorted by
// first use, for the publication.
func (m *Mapper) Tables() []string {
	var out []string
	seen := make(map[string]bool)
	for _, r := range m.rules {
		if !seen[r.qualified] {
			seen[r.qualified] = true
			out = append(out, r.qualified)
		}
	}
	return out
}

// SetIDEpoch sets the id epoch that goes into the ids of transactions
// committed at or past from (see EventID); those before it get the epoch
// before (epoch-1). The store keeps both with its cursor and counts the
// epoch up when an operator accepts a fork of the source's history, from
// where the new history begins: a transaction of the new history with the
// xid and commit LSN of a stored one of the old gets an id of its own
// instead of being taken for a replay, and one the two histories share
// keeps the id it was stored with.
func (m *Mapper) SetIDEpoch(epoch uint32, from cdc.LSN) {
	m.epoch.Store(&idEpoch{n: epoch, from: from})
}

// SetLegacyIDs has the transaction committed at lsn (0: none) keep the
// unordered ids of walhook before ordered ids: an older walhook stored
// part of it (a transaction of several chunks, stopped half-way), and
// its replay must give the stored events and deliveries the same ids.
func (m *Mapper) SetLegacyIDs(lsn cdc.LSN) { m.legacyIDs.Store(uint64(lsn)) }

// Stats returns the counters.
func (m *Mapper) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// opLiterals records the strings n compares op with: op == "update",
// "delete" != op, op in ["insert", "update"].
func (v *refCollector) opLiterals(n *ast.BinaryNode) {
	isOp := func(x ast.Node) bool {
		id, ok := x.(*ast.IdentifierNode)
		return ok && id.Value == "op"
	}
	switch n.Operator {
	case "==", "!=":
		if s, ok := n.Right.(*ast.StringNode); ok && isOp(n.Left) {
			v.opValues = append(v.opValues, s.Value)
		}
		if s, ok := n.Left.(*ast.StringNode); ok && isOp(n.Right) {
			v.opValues = append(v.opValues, s.Value)
		}
	case "in", "not in":
		if a, ok := n.Right.(*ast.ArrayNode); ok && isOp(n.Left) {
			for _, e := range a.Nodes {
				if s, ok := e.(*ast.StringNode); ok {
					v.opValues = append(v.opValues, s.Value)
				}
			}
		}
	}
}
