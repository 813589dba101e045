package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads, expands, decodes, defaults and validates a config file.
// lookupEnv is os.LookupEnv in production. Every problem found is returned
// at once as *Errors; the Config is nil whenever the error is not.
func Load(path string, lookupEnv func(string) (string, bool)) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data, lookupEnv)
}

// ReadFile reads a config file of at most MaxFileSize bytes, as Load does.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	// Not os.ReadFile: --config /dev/zero would fill the memory.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("read config: %s: larger than %d MiB, which no walhook config is (they are a few KB): is it the right file?", path, MaxFileSize>>20)
	}
	return data, nil
}

// MaxFileSize is the largest config file Load reads.
const MaxFileSize = 1 << 20

// Parse is Load for bytes already read; file names the source in messages.
func Parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	return parse(&collector{file: file}, data, lookupEnv)
}

// ParseRules is Parse for a tool that reads only the rules (walhook
// mapping test): a ${VAR} left unset outside events and mapping is no
// error, and its value counts as empty, with nothing reported at it (the
// database, API keys and endpoints it names are not used).
func ParseRules(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	return parse(&collector{file: file, rulesOnly: true}, data, lookupEnv)
}

func parse(c *collector, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	file := c.file
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	root, ok := parseYAML(data, c)
	if !ok || !checkAliases(root, c) {
		return nil, c.err()
	}
	expandTree(root, "", lookupEnv, c)
	cfg := &Config{File: file}
	d := newDecoder(c)
	d.decode(root, reflect.ValueOf(cfg).Elem(), "")
	fillPositions(cfg, d)
	applyDefaults(cfg, d.set)
	validate(cfg, d, c)
	if err := c.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

var (
	yamlLineRe   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	yamlAnchorRe = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)
)

// parseYAML parses exactly one document into a node tree.
func parseYAML(data []byte, c *collector) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			c.add(Pos{Line: 1, Column: 1}, "", "the file is empty")
			return nil, false
		}
		addYAMLError(c, err, data)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		c.add(Pos{Line: extra.Line, Column: extra.Column}, "", "a second YAML document; walhook reads one document per file")
		return nil, false
	} else if !errors.Is(err, io.EOF) {
		addYAMLError(c, err, data)
		return nil, false
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if isNull(root) {
		if root.Value != "" {
			// "null" or "~": a value, not an empty file.
			c.add(posOf(c.file, root), "", "the file holds only %q, which YAML reads as null: it must be a mapping of keys (source:, events:, ...)", root.Value)
			return nil, false
		}
		// Only comments and "---": no value to point at (yaml.v3 puts
		// the empty document past the last line).
		c.add(Pos{Line: 1, Column: 1}, "", "the file is empty")
		return nil, false
	}
	if r := resolveAlias(root); r.Kind != yaml.MappingNode {
		// Every key would be missing too; that says nothing more.
		c.add(posOf(c.file, root), "", "the file must be a mapping of keys (source:, events:, ...), got %s", kindName(r))
		return nil, false
	}
	return root, true
}

// addYAMLError turns a yaml.v3 syntax error into an Error. yaml.v3 reports
// a line but no column, omits the line when it is the first, and for
// parser (not scanner) errors prints the 0-based line of the mark, so those
// are shifted to count from 1 like every other position here.
func addYAMLError(c *collector, err error, data []byte) {
	msg := err.Error()
	line := 1
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		if yamlParserProblems[msg] {
			line++
		}
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
		if m := yamlAnchorRe.FindStringSubmatch(msg); m != nil {
			if n, ok := lineContaining(data, 1, "*"+m[1]); ok {
				line = n // yaml.v3 names no line for this one
			}
		}
	}
	if n, ok := lineContaining(data, line, "${"); flowProblems[msg] && ok && n < line+10 {
		// In [...] and {...} a plain scalar may not contain { or }, so
		// YAML itself refuses an unquoted ${VAR} there. The line yaml.v3
		// names is where the collection starts; the variable may follow.
		msg += ` (inside [...] or {...} write a variable in quotes: "${VAR}")`
	}
	if msg == "found character that cannot start any token" && tabIndented(data, line) {
		msg += " (a tab: YAML indents with spaces only)"
	}
	c.add(Pos{Line: line}, "", "invalid YAML: %s", msg)
}

// tabIndented reports whether line (1-based) of data has a tab in its
// leading whitespace: the usual cause of "cannot start any token".
func tabIndented(data []byte, line int) bool {
	lines := bytes.Split(data, []byte("\n"))
	if line < 1 || line > len(lines) {
		return false
	}
	l := lines[line-1]
	return bytes.ContainsRune(l[:len(l)-len(bytes.TrimLeft(l, " \t"))], '\t')
}

// yamlParserProblems are the messages of yaml.v3's parser (parserc.go); its
// scanner's messages already carry a 1-based line.
var yamlParserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

var flowProblems = map[string]bool{
	"did not find expected ',' or ']'":   true,
	"did not find expected ',' or '}'":   true,
	"did not find expected node content": true,
}

// lineContaining returns the first line from line from (1-based) on that
// contains sub.
func lineContaining(data []byte, from int, sub string) (int, bool) {
	for n, l := range bytes.Split(data, []byte("\n")) {
		if n+1 >= from && bytes.Contains(l, []byte(sub)) {
			return n + 1, true
		}
	}
	return 0, false
}

func fillPositions(cfg *Config, d *decoder) {
	cfg.Source.DSNPos = d.pos["source.dsn"]
	cfg.Store.DSNPos = d.pos["store.dsn"]
	for i := range cfg.Events {
		cfg.Events[i].Pos = d.pos[index("events", i)]
		cfg.Events[i].WhenPos = d.pos[join(index("events", i), "when")]
	}
	for i := range cfg.Endpoints {
		cfg.Endpoints[i].Pos = d.pos[index("endpoints", i)]
	}
}
