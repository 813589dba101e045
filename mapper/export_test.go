package mapper

import (
	"fmt"
	"testing"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
)

// RulesFromConfig converts configured rules the way cmd/walhook's
// mapperRules does (Where "file:line:col: events[i]"), so tests load the
// seed YAML files through the real config loader.
func RulesFromConfig(cfg *config.Config) []Rule {
	rules := make([]Rule, 0, len(cfg.Events))
	for i, r := range cfg.Events {
		mr := Rule{
			Event: r.Event, Description: r.Description, Table: r.Table,
			Changed: r.Changed, When: r.When, AuctionID: r.AuctionID, Domain: r.Domain,
			Envelope: Envelope(r.Envelope),
			Where:    fmt.Sprintf("%s: events[%d]", r.Pos, i),
		}
		for _, op := range r.Operations {
			switch op {
			case "insert":
				mr.Ops = append(mr.Ops, cdc.OpInsert)
			case "update":
				mr.Ops = append(mr.Ops, cdc.OpUpdate)
			case "delete":
				mr.Ops = append(mr.Ops, cdc.OpDelete)
			}
		}
		for j, f := range r.Data {
			df := DataField{Key: f.Key, Column: f.Column, From: f.From, IsConst: f.IsConst, Const: f.Const}
			if f.Pos.Line > 0 {
				df.Where = fmt.Sprintf("%s: events[%d].data[%d]", f.Pos, i, j)
			}
			mr.Data = append(mr.Data, df)
		}
		rules = append(rules, mr)
	}
	return rules
}

// testEnv satisfies the seed files' ${VAR} references.
func testEnv(name string) (string, bool) {
	switch name {
	case "DATABASE_URL":
		return "postgres://walhook@localhost/test", true
	case "WALHOOK_API_KEY":
		return "sk_test_0123456789abcdef0123456789abcdef", true
	}
	return "", false
}

// LoadConfig loads a config file with test values for its variables.
func LoadConfig(t testing.TB, path string) *config.Config {
	t.Helper()
	cfg, err := config.Load(path, testEnv)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return cfg
}

// CompileConfig loads and compiles a config file.
func CompileConfig(t testing.TB, path string, opts Options) *Mapper {
	t.Helper()
	cfg := LoadConfig(t, path)
	if opts.Envelope == "" {
		opts.Envelope = Envelope(cfg.Mapping.Envelope)
	}
	if opts.Domain == "" {
		opts.Domain = cfg.Mapping.Domain
	}
	m, err := Compile(RulesFromConfig(cfg), opts)
	if err != nil {
		t.Fatalf("compile %s: %v", path, err)
	}
	return m
}
