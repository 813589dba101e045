package config

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder is a strict decoder over a yaml.Node tree. yaml.v3's own
// KnownFields stops at the first unknown key and reports no column or key
// path; walking the tree ourselves reports every problem with both, and
// records which keys were written so defaults never overwrite an explicit
// zero (heartbeat_interval: 0 means "off", not "5s").
type decoder struct {
	c      *collector
	pos    map[string]Pos // key path → position of its value
	set    map[string]bool
	visits int
}

func newDecoder(c *collector) *decoder {
	return &decoder{c: c, pos: map[string]Pos{}, set: map[string]bool{}}
}

func posOf(file string, n *yaml.Node) Pos {
	return Pos{File: file, Line: n.Line, Column: n.Column}
}

// errf reports a decoding problem and silences later checks of the same
// key: "must be positive, got 0s" after "invalid duration" is noise.
func (d *decoder) errf(n *yaml.Node, path, format string, args ...any) {
	d.c.add(posOf(d.c.file, n), path, format, args...)
	d.c.silence(path)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return shownValue(n.Value)
	}
	return "nothing"
}

// shownValue quotes a value for an error message unless it may hold a
// password or a secret: a connection string or a secret written in the
// wrong place is not echoed. Of a URL that parses only the scheme and host
// are shown (user info, path and query may carry a password or a token).
func shownValue(s string) string {
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err == nil && u.Scheme != "" {
			shown := u.Scheme + "://"
			if u.User != nil {
				shown += "…@"
			}
			shown += u.Host
			if u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
				shown += "/…"
			}
			return fmt.Sprintf("%q", shown)
		}
	}
	lower := strings.ToLower(s)
	for _, hint := range []string{"://", "@", "=", "password", "secret", "whsec_", "sk_"} {
		if strings.Contains(lower, hint) {
			return "a string (not shown: it may hold a password or a secret)"
		}
	}
	return fmt.Sprintf("%q", s)
}

var (
	durationType  = reflect.TypeOf(Duration(0))
	dataFieldType = reflect.TypeOf(DataField{})
	apiKeyType    = reflect.TypeOf(APIKey{})
	anyType       = reflect.TypeOf((*any)(nil)).Elem()
)

// decode fills v from n. A null value leaves v untouched and the key unset,
// so "key:" with nothing after it means "use the default".
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	// checkAliases has bounded the expanded document already; this is the
	// second line of defence for trees built or changed in code.
	d.visits++
	if d.visits > maxNodes {
		if d.visits == maxNodes+1 {
			d.errf(n, path, "document too large (more than %d nodes after resolving aliases)", maxNodes)
		}
		return
	}
	n = resolveAlias(n)
	if n.Kind == yaml.AliasNode {
		d.errf(n, path, "alias chain too deep")
		return
	}
	d.pos[path] = posOf(d.c.file, n)
	if isNull(n) {
		return
	}
	if path != "" {
		d.set[path] = true
	}
	switch v.Type() {
	case durationType:
		d.duration(n, v, path)
		return
	case dataFieldType:
		d.dataField(n, v.Addr().Interface().(*DataField), path)
		return
	case apiKeyType:
		d.apiKey(n, v.Addr().Interface().(*APIKey), path)
		return
	case anyType:
		var x any
		if err := n.Decode(&x); err != nil {
			d.errf(n, path, "%v", strings.TrimPrefix(err.Error(), "yaml: "))
			return
		}
		v.Set(reflect.ValueOf(&x).Elem())
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errf(n, path, "must be a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), index(path, i))
		}
		v.Set(s)
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(n, path, "true or false")
		if !ok {
			return
		}
		switch strings.ToLower(s) {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.errf(n, path, "must be true or false, got %s", shownValue(s))
		}
	case reflect.Int:
		s, ok := d.scalar(n, path, "an integer")
		if !ok {
			return
		}
		i, err := strconv.ParseInt(s, 0, 64)
		var ne *strconv.NumError
		switch {
		case err != nil && !(errors.As(err, &ne) && ne.Err == strconv.ErrRange):
			d.errf(n, path, "must be an integer, got %s", shownValue(s))
			return
		case err != nil && strings.HasPrefix(s, "-"), err == nil && i < math.MinInt32:
			d.errf(n, path, "out of range: at least %d, got %s", math.MinInt32, s)
			return
		case err != nil, i > math.MaxInt32:
			d.errf(n, path, "out of range: at most %d, got %s", math.MaxInt32, s)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		s, ok := d.scalar(n, path, "a number")
		if !ok {
			return
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			d.errf(n, path, "must be a number, got %s", shownValue(s))
			return
		}
		v.SetFloat(f)
	default:
		panic("config: no decoder for " + v.Type().String())
	}
}

func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errf(n, path, "must be %s, got %s", want, kindName(n))
		return "", false
	}
	return n.Value, true
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	s, ok := d.scalar(n, path, `a duration like "30s"`)
	if !ok {
		return
	}
	dur, err := time.ParseDuration(s)
	if err != nil && durationSyntaxRe.MatchString(s) {
		// Written like a duration, so too long for one (int64 nanoseconds).
		d.errf(n, path, "duration out of range: at most %dh (about 292 years), got %q", int64(math.MaxInt64/int64(time.Hour)), s)
		return
	}
	if err != nil {
		hint := ""
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			hint = fmt.Sprintf(" (a duration needs a unit: %ss, %sm, %sh)", s, s, s)
		}
		d.errf(n, path, "invalid duration %s: use a Go duration like \"30s\", \"5m\" or \"12h\"%s", shownValue(s), hint)
		return
	}
	v.SetInt(int64(dur))
}

// durationSyntaxRe matches what time.ParseDuration reads, whatever the
// size: its one other failure is a value past int64 nanoseconds.
var durationSyntaxRe = regexp.MustCompile(`^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`)

// pair is one key/value of a mapping, after merge keys (<<) are resolved.
type pair struct{ k, v *yaml.Node }

// pairs returns a mapping's entries. Entries merged in with "<<: *anchor"
// come first and are overridden by keys written in the mapping itself, as
// YAML's merge key type specifies. Keys written twice are an error.
func (d *decoder) pairs(n *yaml.Node, path string) []pair {
	var merged, own []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			src := resolveAlias(v)
			srcs := []*yaml.Node{src}
			if src.Kind == yaml.SequenceNode {
				srcs = src.Content
			}
			for _, s := range srcs {
				s = resolveAlias(s)
				if s.Kind != yaml.MappingNode {
					d.errf(v, path, "<< must merge a mapping, got %s", kindName(s))
					continue
				}
				d.visits += len(s.Content)
				if d.visits > maxNodes {
					continue
				}
				merged = append(merged, d.pairs(s, path)...)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.errf(k, path, "keys must be plain strings, got %s", kindName(k))
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			d.errf(k, join(path, k.Value), "key written twice (first at line %d)", prev.Line)
			continue
		}
		seen[k.Value] = k
		own = append(own, pair{k, v})
	}
	out := own
	for _, p := range merged {
		if _, overridden := seen[p.k.Value]; !overridden {
			seen[p.k.Value] = p.k
			out = append(out, p)
		}
	}
	return out
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errf(n, path, "must be a mapping, got %s", kindName(n))
		return
	}
	fields := fieldsOf(v.Type())
	written := map[string]bool{}
	var meant []string
	for _, p := range d.pairs(n, path) {
		written[p.k.Value] = true
		idx, ok := fields[p.k.Value]
		if !ok && path == "" && strings.HasPrefix(p.k.Value, "x-") {
			continue // top-level x-… keys hold YAML anchors for reuse
		}
		if !ok {
			hint := ""
			if m := closest(p.k.Value, fields); m != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", m)
				meant = append(meant, m)
			}
			d.errf(p.k, join(path, p.k.Value), "unknown key%s", hint)
			continue
		}
		d.decode(p.v, v.Field(idx), join(path, p.k.Value))
	}
	// "tabel: x" leaves table unset; "events[0].table: required" would
	// only repeat the misspelling already reported, so the key the user
	// probably meant stays quiet unless it was written as well.
	for _, m := range meant {
		if !written[m] {
			d.c.silence(join(path, m))
		}
	}
}

// fieldsOf maps yaml key names to struct field indexes.
func fieldsOf(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		m[name] = i
	}
	return m
}

// closest returns the known key within edit distance 2 of a misspelt one
// (ties broken alphabetically), or "".
func closest(key string, fields map[string]int) string {
	best, bestD := "", 3
	for k := range fields {
		if dd := editDistance(strings.ToLower(key), k); dd < bestD || (dd == bestD && k < best) {
			best, bestD = k, dd
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// dataField decodes "column", "old.column" or a one-key mapping
// "key: column|new.col|old.col|{const: value}".
func (d *decoder) dataField(n *yaml.Node, f *DataField, path string) {
	f.Pos = posOf(d.c.file, n)
	switch n.Kind {
	case yaml.ScalarNode:
		from, col, err := parseColumnRef(n.Value)
		if err != nil {
			d.errf(n, path, "%v", err)
			return
		}
		f.Key, f.From, f.Column = col, from, col
	case yaml.MappingNode:
		if len(n.Content) != 2 {
			d.errf(n, path, "must be a column name or a one-key mapping like `key: column`, got a mapping with %d keys", len(n.Content)/2)
			return
		}
		k, val := n.Content[0], resolveAlias(n.Content[1])
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			d.errf(k, path, "the data key must be a non-empty string")
			return
		}
		f.Key = k.Value
		sub := join(path, k.Value)
		switch val.Kind {
		case yaml.ScalarNode:
			if isNull(val) {
				d.errf(val, sub, "needs a column (column, new.column or old.column) or {const: value}")
				return
			}
			from, col, err := parseColumnRef(val.Value)
			if err != nil {
				d.errf(val, sub, "%v", err)
				return
			}
			f.From, f.Column = from, col
		case yaml.MappingNode:
			if len(val.Content) != 2 || val.Content[0].Value != "const" {
				d.errf(val, sub, "a mapping value must be {const: value}")
				return
			}
			f.IsConst = true
			d.decode(val.Content[1], reflect.ValueOf(&f.Const).Elem(), join(sub, "const"))
		default:
			d.errf(val, sub, "must be a column (column, new.column or old.column) or {const: value}, got %s", kindName(val))
		}
	default:
		d.errf(n, path, "must be a column name or a one-key mapping like `key: column`, got %s", kindName(n))
	}
}

// parseColumnRef splits "column", "new.column" or "old.column".
func parseColumnRef(s string) (from, col string, err error) {
	from, col = "", s
	if f, c, ok := strings.Cut(s, "."); ok {
		if f != "new" && f != "old" {
			return "", "", fmt.Errorf("column reference %q: write column, new.column or old.column", s)
		}
		from, col = f, c
	}
	if !validColumn(col) {
		return "", "", fmt.Errorf("column reference %q: the column name is empty or holds a dot, a tab or a line break; write column, new.column or old.column", s)
	}
	return from, col, nil
}

// apiKey decodes a bare key string or {name, key}.
func (d *decoder) apiKey(n *yaml.Node, k *APIKey, path string) {
	if n.Kind == yaml.ScalarNode {
		k.Key = n.Value
		return
	}
	d.structure(n, reflect.ValueOf(k).Elem(), path)
}
