package config

import (
	"errors"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// expandTree replaces ${VAR} and ${VAR:-default} in every scalar value of
// the tree. Mapping keys are left alone: a variable may fill in a value but
// never invent a key. Expansion happens after parsing, so a value containing
// ": " or a newline cannot change the document's structure.
func expandTree(n *yaml.Node, path string, lookup func(string) (string, bool), c *collector) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, ch := range n.Content {
			expandTree(ch, path, lookup, c)
		}
	case yaml.SequenceNode:
		for i, ch := range n.Content {
			expandTree(ch, index(path, i), lookup, c)
		}
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			expandTree(n.Content[i], join(path, n.Content[i-1].Value), lookup, c)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		v, err := expand(n.Value, lookup)
		if err != nil {
			var unset *unsetError
			if !c.rulesOnly || !errors.As(err, &unset) || path == "events" || strings.HasPrefix(path, "events[") ||
				path == "mapping" || strings.HasPrefix(path, "mapping.") {
				c.add(posOf(c.file, n), path, "%v", err)
			}
			// Decode the value as an empty string and stay quiet about
			// it below: "source.dsn: required" would only repeat this.
			c.silence(path)
			n.Value, n.Tag, n.Style = "", "!!str", yaml.DoubleQuotedStyle
			return
		}
		if v != n.Value {
			n.Value = v
			// A plain scalar is re-resolved from its new text, so
			// `workers: ${WORKERS:-4}` is the integer 4 and `x: ${V}` with
			// V unset-to-"" behaves like an empty value. Quoted scalars stay
			// strings.
			if n.Style == 0 {
				n.Tag = ""
			}
		}
	}
}

// expand performs shell-like substitution on one string:
//
//	${VAR}          the value of VAR; an error when VAR is unset
//	${VAR:-default} the value of VAR, or default when VAR is unset or empty
//	$$              a literal $
//
// A $ followed by anything else is kept as it is, so passwords and regular
// expressions with a lone $ need no escaping.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				// The value is not quoted back: it may be a DSN or a secret.
				return "", fmt.Errorf("unterminated ${ (close it with }, or write $$ for a literal $)")
			}
			expr := s[i+2 : i+2+end]
			name, def, hasDef := strings.Cut(expr, ":-")
			if !validVarName(name) {
				// Echoed only when it reads as a name (e.g. 1BAD): inside a
				// DSN or secret, ${…} may be part of a password.
				if !nameLike(name) {
					return "", fmt.Errorf("invalid variable name in a ${…} (not shown: it may be part of a password; use letters, digits and _, or write $$ for a literal $)")
				}
				// Only the name: a default after :- may be a password.
				return "", fmt.Errorf("invalid variable name %q in a ${…} (use letters, digits and _, not starting with a digit; write $$ for a literal $)", name)
			}
			v, ok := lookup(name)
			switch {
			case hasDef && (!ok || v == ""):
				v = def
			case !ok:
				return "", &unsetError{name}
			}
			b.WriteString(v)
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

// unsetError is a ${VAR} without a default whose variable is not set.
type unsetError struct{ name string }

func (e *unsetError) Error() string {
	return fmt.Sprintf("environment variable %s is not set (set it, or give a default: ${%s:-value})", e.name, e.name)
}

// nameLike reports a short run of letters, digits and _: a variable name
// gone wrong (a leading digit), not a fragment of a password.
func nameLike(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func validVarName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '_', ch >= 'A' && ch <= 'Z', ch >= 'a' && ch <= 'z':
		case ch >= '0' && ch <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
