package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/mapper"
)

const mappingUsage = `Usage:
  walhook mapping test --config FILE --changes FILE.jsonl

Maps row changes written as JSON lines with the config's rules, offline (no
database), and prints for every change the events it produces (the webhook
body) and, for every rule of its table, whether it matched or why not.
Use "-" to read the changes from standard input. One change per line:

  {"table": "public.problem_reports", "op": "update",
   "old": {"id": "p1", "status": "open"}, "new": {"id": "p1", "status": "closed"}}

See docs/mapping.md for the whole format.
`

func runMapping(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, mappingUsage)
		return ErrHelpShown
	}
	if len(args) == 0 || args[0] != "test" {
		fmt.Fprint(stderr, mappingUsage)
		if len(args) == 0 {
			return usageErrorf("mapping: no subcommand given (want: test)")
		}
		return usageErrorf("mapping: unknown subcommand %q (want: test)", args[0])
	}
	fs := newFlagSet("mapping test", stderr)
	cfgPath := configFlag(fs)
	changes := fs.String("changes", "", "changes as JSON lines; - for standard input")
	if err := parseFlags(fs, args[1:], stdout); err != nil {
		return err
	}
	if *changes == "" {
		return usageErrorf("mapping test: --changes FILE.jsonl is required")
	}
	cfg, err := loadMappingConfig(*cfgPath)
	if err != nil {
		return err
	}
	var logs bytes.Buffer
	m, err := compileMapper(cfg, "", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		return err
	}
	var in io.Reader
	name := *changes
	if name == "-" {
		in, name = os.Stdin, "stdin"
	} else {
		f, err := os.Open(name)
		if err != nil {
			return usageErrorf("mapping test: %v", err)
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil && st.IsDir() {
			return usageErrorf("mapping test: --changes %s is a directory; give a file of JSON lines", name)
		}
		in = f
	}
	samples, err := readChanges(name, in, m.Columns)
	if err != nil {
		return &UsageError{Err: err}
	}
	failed := 0
	for _, c := range samples {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !printExplanation(stdout, c, m.Explain(c.tx, 0)) {
			failed++
		}
	}
	fmt.Fprintf(stdout, "%d changes\n", len(samples))
	if failed > 0 {
		return fmt.Errorf("mapping test: %d of %d changes cannot be mapped (walhook run would stop on them)", failed, len(samples))
	}
	return nil
}

// loadMappingConfig loads the config like every command, except that a
// ${VAR} left unset outside the rules is not an error: the mapping test
// reads only the rules and needs no database, API key or endpoint.
func loadMappingConfig(path string) (*config.Config, error) {
	if path == "" {
		path = os.Getenv("WALHOOK_CONFIG")
	}
	if strings.TrimSpace(path) == "" {
		return nil, usageErrorf("no config: pass --config FILE or set WALHOOK_CONFIG")
	}
	data, err := config.ReadFile(path)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	cfg, err := config.ParseRules(path, data, os.LookupEnv)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	return cfg, nil
}

// changeLine is one line of the changes file.
type changeLine struct {
	Table string          `json:"table"`
	Op    string          `json:"op"`
	Old   json.RawMessage `json:"old"`
	New   json.RawMessage `json:"new"`
	// Identity is the table's REPLICA IDENTITY: "full" (default) or
	// "default".
	Identity string `json:"identity"`
	// Key lists the replica identity's columns (default: "id" when the
	// rows have it).
	Key []string `json:"key"`
	// Unavailable lists columns of new that PostgreSQL did not send
	// (unchanged TOAST values).
	Unavailable []string `json:"unavailable"`
	// CommitTime is the transaction's commit time (default
	// 2024-01-01T00:00:00Z), the envelope's timestamp.
	CommitTime *time.Time `json:"commit_time"`
}

// sampleChange is one parsed line: a one-change transaction.
type sampleChange struct {
	line int
	tx   *cdc.Tx
	// filled lists the columns rules name that the line does not give;
	// they are NULL in its rows.
	filled []string
}

// readChanges parses the changes file into one transaction per change.
// Blank lines and lines starting with # or // are skipped. Every bad line
// is reported. columns returns the columns the rules of a table read.
func readChanges(name string, in io.Reader, columns func(table string) []string) (out []sampleChange, err error) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	var errs []error
	oids := map[string]uint32{}
	n := 0
	for sc.Scan() {
		n++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") || strings.HasPrefix(text, "//") {
			continue
		}
		tx, filled, err := parseChange([]byte(text), oids, columns)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", name, n, err))
			continue
		}
		tx.Xid = uint32(n)
		tx.CommitLSN = cdc.LSN(n)
		out = append(out, sampleChange{line: n, tx: tx, filled: filled})
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		errs = append(errs, fmt.Errorf("%s:%d: line longer than 16 MiB: one change per line", name, n+1))
	} else if err != nil {
		errs = append(errs, fmt.Errorf("%s:%d: %w", name, n+1, err))
	}
	if len(errs) == 0 && len(out) == 0 {
		errs = append(errs, fmt.Errorf("%s: no changes", name))
	}
	return out, errors.Join(errs...)
}

// jsonKind names a JSON value kind as encoding/json's type errors give it.
func jsonKind(v string) string {
	switch v {
	case "array", "object":
		return "an " + v
	}
	return "a " + v
}

// changeLineList reports whether the changeLine field named name in JSON
// is a list of strings.
func changeLineList(name string) bool {
	t := reflect.TypeFor[changeLine]()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Tag.Get("json") == name {
			return f.Type == reflect.TypeFor[[]string]()
		}
	}
	return false
}

func parseChange(text []byte, oids map[string]uint32, columns func(string) []string) (*cdc.Tx, []string, error) {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	var cl changeLine
	if err := dec.Decode(&cl); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te) && te.Field == "":
			err = fmt.Errorf(`want one JSON object per line ({"table": …, "op": …}), got %s`, jsonKind(te.Value))
		case errors.As(err, &te):
			want, got := "a string", jsonKind(te.Value)
			switch {
			case te.Type.Kind() == reflect.Slice:
				want = "a list of strings"
			case changeLineList(te.Field):
				// An element of the list: te.Type is the element's.
				want, got = "a list of strings", "a list holding "+got
			}
			err = fmt.Errorf("%q must be %s, got %s", te.Field, want, got)
		}
		return nil, nil, fmt.Errorf("not a change object: %v", err)
	}
	if dec.More() {
		return nil, nil, errors.New("more than one JSON value on the line")
	}
	ch := cdc.Change{}
	switch cl.Op {
	case "insert":
		ch.Op = cdc.OpInsert
	case "update":
		ch.Op = cdc.OpUpdate
	case "delete":
		ch.Op = cdc.OpDelete
	case "":
		return nil, nil, errors.New(`"op" is required: insert, update or delete`)
	default:
		return nil, nil, fmt.Errorf(`"op" must be insert, update or delete, got %q`, cl.Op)
	}
	if cl.Table == "" {
		return nil, nil, errors.New(`"table" is required ("schema.table" or "table")`)
	}
	// As a rule's table: "schema.table" or "table". Another shape ("a.b.c",
	// ".t") would name a table no rule can, and map to nothing in silence.
	schema, table, err := config.SplitTable(cl.Table)
	if err != nil {
		return nil, nil, fmt.Errorf(`"table": %v`, err)
	}
	old, err := parseRow("old", cl.Old)
	if err != nil {
		return nil, nil, err
	}
	newRow, err := parseRow("new", cl.New)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case ch.Op == cdc.OpInsert && newRow == nil:
		return nil, nil, errors.New(`an insert needs "new"`)
	case ch.Op == cdc.OpInsert && old != nil:
		return nil, nil, errors.New(`an insert has no "old"`)
	case ch.Op == cdc.OpUpdate && newRow == nil:
		return nil, nil, errors.New(`an update needs "new" (and "old" for rules that compare)`)
	case ch.Op == cdc.OpDelete && old == nil:
		return nil, nil, errors.New(`a delete needs "old"`)
	case ch.Op == cdc.OpDelete && newRow != nil:
		return nil, nil, errors.New(`a delete has no "new"`)
	}
	rel := &cdc.Relation{Schema: schema, Name: table, ReplicaIdentity: 'f'}
	switch strings.ToLower(cl.Identity) {
	case "", "full":
	case "default":
		rel.ReplicaIdentity = 'd'
	default:
		return nil, nil, fmt.Errorf(`"identity" must be full or default, got %q`, cl.Identity)
	}
	// Columns: those of new, then those only old has, in order.
	for _, r := range []*orderedRow{newRow, old} {
		if r == nil {
			continue
		}
		for _, c := range r.cols {
			if rel.ColumnIndex(c) < 0 {
				rel.Columns = append(rel.Columns, cdc.Column{Name: c})
			}
		}
	}
	// Columns the rules read but the line does not give are NULL: a
	// sample need not spell out every column.
	var filled []string
	for _, c := range columns(rel.Table()) {
		if rel.ColumnIndex(c) < 0 {
			rel.Columns = append(rel.Columns, cdc.Column{Name: c})
			filled = append(filled, c)
			for _, r := range []*orderedRow{newRow, old} {
				if r != nil {
					r.vals[c] = cdc.Value{State: cdc.Null}
				}
			}
		}
	}
	keys := cl.Key
	if keys == nil && rel.ColumnIndex("id") >= 0 {
		keys = []string{"id"}
	}
	for _, k := range keys {
		i := rel.ColumnIndex(k)
		if i < 0 {
			return nil, nil, fmt.Errorf(`"key": column %q is in neither row`, k)
		}
		rel.Columns[i].Key = true
	}
	// One OID per table and column list, as pgoutput would announce it.
	sig := rel.Table() + "\x00" + fmt.Sprint(rel.Columns, rel.ReplicaIdentity)
	if oids[sig] == 0 {
		oids[sig] = uint32(len(oids) + 16384)
	}
	rel.OID = oids[sig]
	ch.Rel = rel
	if newRow != nil {
		ch.New = newRow.values(rel, cdc.Null)
		for _, c := range cl.Unavailable {
			i := rel.ColumnIndex(c)
			if i < 0 {
				return nil, nil, fmt.Errorf(`"unavailable": column %q is not in "new"`, c)
			}
			ch.New[i] = cdc.Value{State: cdc.Unavailable}
		}
	} else if len(cl.Unavailable) > 0 {
		return nil, nil, errors.New(`"unavailable" names columns of "new", which a delete has none of`)
	}
	if old != nil {
		ch.Old = old.values(rel, cdc.Absent)
	}
	commit := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	if cl.CommitTime != nil {
		commit = cl.CommitTime.UTC()
	}
	return &cdc.Tx{CommitTime: commit, Changes: []cdc.Change{ch}, Final: true}, filled, nil
}

// orderedRow is a JSON object with its key order kept.
type orderedRow struct {
	cols []string
	vals map[string]cdc.Value
}

// values aligns the row with rel; columns the row lacks get missing.
func (r *orderedRow) values(rel *cdc.Relation, missing cdc.ValueState) []cdc.Value {
	out := make([]cdc.Value, len(rel.Columns))
	for i, c := range rel.Columns {
		v, ok := r.vals[c.Name]
		if !ok {
			v = cdc.Value{State: missing}
		}
		out[i] = v
	}
	return out
}

// parseRow reads a row object. Values become what cdc decodes: strings
// in RFC 3339 form become timestamps, numbers keep their exact text
// (json.Number), objects and arrays are json values, null is NULL.
func parseRow(field string, raw json.RawMessage) (*orderedRow, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%q must be an object of column: value", field)
	}
	r := &orderedRow{vals: map[string]cdc.Value{}}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%q: %v", field, err)
		}
		col := tok.(string)
		if _, dup := r.vals[col]; dup {
			return nil, fmt.Errorf("%q: column %q given twice", field, col)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%q.%s: %v", field, col, err)
		}
		r.cols = append(r.cols, col)
		r.vals[col] = jsonValue(v)
	}
	return r, nil
}

func jsonValue(v json.RawMessage) cdc.Value {
	switch {
	case string(v) == "null":
		return cdc.Value{State: cdc.Null}
	case string(v) == "true" || string(v) == "false":
		return cdc.Value{V: string(v) == "true"}
	case v[0] == '"':
		var s string
		json.Unmarshal(v, &s)
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return cdc.Value{V: t.UTC()}
		}
		// Without a zone: a `timestamp without time zone` value.
		if t, err := time.ParseInLocation("2006-01-02T15:04:05.999999999", s, cdc.NoZone); err == nil {
			return cdc.Value{V: t}
		}
		return cdc.Value{V: s}
	case v[0] == '{' || v[0] == '[':
		return cdc.Value{V: v}
	}
	return cdc.Value{V: json.Number(v)}
}

// printExplanation prints one change's events and rule outcomes; false
// when a rule cannot be applied to it.
func printExplanation(w io.Writer, c sampleChange, ex mapper.Explanation) bool {
	ch := &c.tx.Changes[0]
	fmt.Fprintf(w, "line %d: %s %s: %d event(s)\n", c.line, ch.Op, ch.Rel.Table(), len(ex.Events))
	if len(c.filled) > 0 {
		fmt.Fprintf(w, "  (not in the line, taken as NULL: %s)\n", strings.Join(c.filled, ", "))
	}
	if len(ex.Rules) == 0 {
		fmt.Fprintf(w, "  no rule reads %s\n", ch.Rel.Table())
	}
	ok := true
	evs := ex.Events
	for _, o := range ex.Rules {
		switch {
		case o.Err != nil:
			ok = false
			fmt.Fprintf(w, "  %s: error: %v\n", o.Event, indent(o.Err.Error()))
			switch {
			case errors.Is(o.Err, mapper.ErrUnknownColumn):
				fmt.Fprintf(w, "    (the change's rows have no such column: add it to the line, or fix the rule)\n")
			case errors.Is(o.Err, mapper.ErrNeedsOldValues) && ch.Old == nil:
				fmt.Fprintf(w, "    (the line has no \"old\": give the old row, as REPLICA IDENTITY FULL sends it)\n")
			}
		case o.Matched:
			e := evs[0]
			evs = evs[1:]
			fmt.Fprintf(w, "  %s (%s): matched\n    %s\n", o.Event, o.Where, e.Body(mapper.DeliveryID(e.Envelope, e.ID, "dry-run")))
		default:
			fmt.Fprintf(w, "  %s (%s): not matched: %s\n", o.Event, o.Where, o.Reason)
		}
	}
	return ok
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }
