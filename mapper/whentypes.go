package mapper

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/parser"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/cdc"
)

// firstUserOID is PostgreSQL's FirstNormalObjectId: types with a smaller
// OID are built in.
const firstUserOID = 16384

var (
	typeAny    = reflect.TypeOf((*any)(nil)).Elem()
	typeString = reflect.TypeOf("")
	typeInt    = reflect.TypeOf(int64(0))
	typeFloat  = reflect.TypeOf(float64(0))
	typeBool   = reflect.TypeOf(false)
	typeTime   = reflect.TypeOf(time.Time{})
	typeBytes  = reflect.TypeOf([]byte(nil))
	typeList   = reflect.TypeOf([]any(nil))
)

// whenTypes are the Go types a column of type oid can have in `when:`
// (see envAny and cdc's valueDecoder), the usual one first. A numeric is
// an integer when whole and a float otherwise; a built-in array is a
// list, or PostgreSQL's text when it has several dimensions; json is
// any shape.
func whenTypes(oid uint32) []reflect.Type {
	switch oid {
	case 0, pgtype.JSONOID, pgtype.JSONBOID:
		return []reflect.Type{typeAny}
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.UUIDOID, pgtype.DateOID:
		return []reflect.Type{typeString}
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID, pgtype.XIDOID:
		return []reflect.Type{typeInt}
	case pgtype.NumericOID:
		return []reflect.Type{typeInt, typeFloat}
	case pgtype.Float4OID, pgtype.Float8OID:
		return []reflect.Type{typeFloat}
	case pgtype.BoolOID:
		return []reflect.Type{typeBool}
	case pgtype.TimestamptzOID, pgtype.TimestampOID:
		return []reflect.Type{typeTime}
	case pgtype.ByteaOID:
		return []reflect.Type{typeBytes}
	}
	if oid >= firstUserOID {
		// Enums, composite types, arrays of types created in the
		// database, extension types: PostgreSQL's text.
		return []reflect.Type{typeString}
	}
	if cdc.ListType(oid) {
		// A one-dimensional array is a list; one of several dimensions
		// is PostgreSQL's text.
		return []reflect.Type{typeList, typeString}
	}
	// Other built-in types (interval, inet, time, money…): their text.
	return []reflect.Type{typeString}
}

// checkWhenTypes type-checks r's `when:` with the types ts gives its
// columns, reporting an expression that fails (or, for == and !=, can
// never hold) on every row, which the untyped check at load cannot see:
// `new.total > "10"` on a numeric, `new.status == 3` on an enum,
// `new.due > now()` on a date. It is an error only when the expression
// fails for every type a column can take (a numeric as an integer and as
// a float).
func checkWhenTypes(r *compiledRule, ts TableSchema, errs *errorList) {
	if r.when == nil || r.whenWholeOld || r.whenWholeNew || len(ts.Types) != len(ts.Columns) {
		return
	}
	// The typed row names columns by struct tags, and expr takes the tag
	// "-" for a field it hides: a column of that name cannot be typed.
	if slices.Contains(r.whenOld, "-") || slices.Contains(r.whenNew, "-") {
		return
	}
	var first error
	for alt := 0; alt < 2; alt++ {
		fields := make([]reflect.StructField, 0, len(ts.Columns))
		for i, c := range ts.Columns {
			ts := whenTypes(ts.Types[i])
			t := ts[0]
			if alt < len(ts) {
				t = ts[alt]
			}
			fields = append(fields, reflect.StructField{Name: fmt.Sprintf("C%d", i), Type: t,
				Tag: reflect.StructTag(fmt.Sprintf("expr:%q", c))})
		}
		row := reflect.New(reflect.StructOf(fields)).Interface()
		env := map[string]any{"old": row, "new": row, "op": ""}
		_, err := expr.Compile(r.When, expr.Env(env), expr.AsBool())
		if err != nil && numericModMismatch(err) {
			_, err = expr.Compile(r.When, expr.Env(env), expr.AsBool(), modFunc, expr.Patch(modToFunc{}))
		}
		if err == nil {
			return
		}
		if first == nil {
			first = err
		}
	}
	var cols, textArrays []string
	seen := map[string]bool{}
	for _, c := range append(append([]string(nil), r.whenOld...), r.whenNew...) {
		if seen[c] {
			continue
		}
		seen[c] = true
		for i, name := range ts.Columns {
			if name == c && i < len(ts.TypeNames) {
				cols = append(cols, fmt.Sprintf("%s %s", c, ts.TypeNames[i]))
				// An array of an enum, a domain or an extension's type:
				// text, though its type says array.
				if ts.Types[i] >= firstUserOID && strings.HasSuffix(ts.TypeNames[i], "[]") {
					textArrays = append(textArrays, c)
				}
			}
		}
	}
	hint := ""
	if len(textArrays) > 0 {
		is := "is an array"
		if len(textArrays) > 1 {
			is = "are arrays"
		}
		hint = fmt.Sprintf("; %s %s of a type created in the database or by an extension, which when: reads as PostgreSQL's text "+
			"(\"{a,b}\"), not as a list", strings.Join(textArrays, ", "), is)
	}
	where, field := r.whenWhere()
	errs.add(where, field, r.Event, ErrExpression,
		"%s does not fit the types of its columns in %s (%s): it would stop the run at the first row it reads, "+
			"or never be true; compare each column with a value of its type (docs/mapping.md says what each type is in when:)%s: %s",
		r.When, r.qualified, strings.Join(cols, ", "), hint, strings.TrimSpace(first.Error()))
}

// checkWhenEnums reports a when: that compares an enum column with a
// string that is none of the enum's labels (`new.status == "canceled"`
// for 'cancelled'): the comparison has one answer on every row, and the
// rule never fires (or always does).
func checkWhenEnums(r *compiledRule, ts TableSchema, errs *errorList) {
	if r.when == nil || len(ts.EnumLabels) == 0 {
		return
	}
	tree, err := parser.Parse(r.When)
	if err != nil {
		return
	}
	v := &enumLiterals{labels: ts.EnumLabels}
	ast.Walk(&tree.Node, v)
	if v.bad == "" {
		return
	}
	typ := ""
	for i, c := range ts.Columns {
		if c == v.col && i < len(ts.TypeNames) {
			typ = " " + ts.TypeNames[i]
		}
	}
	quoted := make([]string, len(ts.EnumLabels[v.col]))
	for i, l := range ts.EnumLabels[v.col] {
		quoted[i] = fmt.Sprintf("%q", l)
	}
	// In a list (in [...]) with other values, the comparison varies;
	// the entry alone matches nothing.
	effect := "the comparison is the same on every row"
	if v.inList {
		effect = "that entry of the list matches no row"
	}
	where, field := r.whenWhere()
	errs.add(where, field, r.Event, ErrExpression,
		"compares %s.%s with %q, which is not a value of its enum%s in %s (%s), so %s; "+
			"write one of its values (they are case-sensitive)",
		v.from, v.col, v.bad, typ, r.qualified, strings.Join(quoted, ", "), effect)
}

// enumLiterals finds the first string literal compared (==, !=, in) with
// an enum column, old.x or new.x, that is not one of its labels.
type enumLiterals struct {
	labels         map[string][]string
	from, col, bad string
	inList         bool // bad is an entry of a list of several
}

func (v *enumLiterals) Visit(node *ast.Node) {
	n, ok := (*node).(*ast.BinaryNode)
	if !ok || v.bad != "" {
		return
	}
	column := func(x ast.Node) (from, col string, ok bool) {
		m, isMember := x.(*ast.MemberNode)
		if !isMember || m.Method {
			return "", "", false
		}
		id, isID := m.Node.(*ast.IdentifierNode)
		s, isStr := m.Property.(*ast.StringNode)
		if !isID || !isStr || (id.Value != "old" && id.Value != "new") || v.labels[s.Value] == nil {
			return "", "", false
		}
		return id.Value, s.Value, true
	}
	try := func(x, lit ast.Node) {
		from, col, ok := column(x)
		if !ok {
			return
		}
		var lits []ast.Node
		if a, isArray := lit.(*ast.ArrayNode); isArray {
			lits = a.Nodes
		} else {
			lits = []ast.Node{lit}
		}
		for _, l := range lits {
			if s, isStr := l.(*ast.StringNode); isStr && !slices.Contains(v.labels[col], s.Value) && v.bad == "" {
				v.from, v.col, v.bad, v.inList = from, col, s.Value, len(lits) > 1
			}
		}
	}
	switch n.Operator {
	case "==", "!=":
		try(n.Left, n.Right)
		try(n.Right, n.Left)
	case "in":
		if _, isArray := n.Right.(*ast.ArrayNode); isArray {
			try(n.Left, n.Right)
		}
	}
}
