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

	"gopkg.in/yaml.v3"
)

// Load reads, expands, decodes, defaults and validates a config file.
// lookupEnv is os.LookupEnv in production. Every problem found is returned
// at once as *Errors; the Config is nil whenever the error is not.
func Load(path string, lookupEnv func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, lookupEnv)
}

// Parse is Load for bytes already read; file names the source in messages.
func Parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	c := &collector{file: file}
	root, ok := parseYAML(data, c)
	if !ok {
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

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML parses exactly one document into a node tree.
func parseYAML(data []byte, c *collector) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			c.add(Pos{Line: 1, Column: 1}, "", "the file is empty")
			return nil, false
		}
		addYAMLError(c, err)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		c.add(Pos{Line: extra.Line, Column: extra.Column}, "", "a second YAML document; walhook reads one document per file")
		return nil, false
	} else if !errors.Is(err, io.EOF) {
		addYAMLError(c, err)
		return nil, false
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if isNull(root) {
		c.add(posOf(c.file, root), "", "the file is empty")
		return nil, false
	}
	return root, true
}

// addYAMLError turns a yaml.v3 syntax error into an Error. yaml.v3 reports
// a line (and omits it for the first line) but no column.
func addYAMLError(c *collector, err error) {
	msg := err.Error()
	line := 1
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else if len(msg) > 6 && msg[:6] == "yaml: " {
		msg = msg[6:]
	}
	c.add(Pos{Line: line}, "", "invalid YAML: %s", msg)
}

func fillPositions(cfg *Config, d *decoder) {
	for i := range cfg.Events {
		cfg.Events[i].Pos = d.pos[index("events", i)]
	}
	for i := range cfg.Endpoints {
		cfg.Endpoints[i].Pos = d.pos[index("endpoints", i)]
	}
}
