package main

import (
	"fmt"
	"log/slog"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/mapper"
)

// The working packages never import config (ARCHITECTURE.md): this file
// turns the YAML shape into each package's own options.

// mapperRules converts the configured rules into mapper rules. Each rule's
// Where is "file:line:col: events[i]" so compile and schema errors point at
// the YAML.
func mapperRules(cfg *config.Config) []mapper.Rule {
	rules := make([]mapper.Rule, 0, len(cfg.Events))
	for i, r := range cfg.Events {
		mr := mapper.Rule{
			Event:       r.Event,
			Description: r.Description,
			Table:       r.Table,
			Changed:     r.Changed,
			When:        r.When,
			AuctionID:   r.AuctionID,
			Domain:      r.Domain,
			Envelope:    mapper.Envelope(r.Envelope),
			Where:       fmt.Sprintf("%s: events[%d]", r.Pos, i),
		}
		if r.WhenPos.Line > 0 {
			mr.WhenWhere = fmt.Sprintf("%s: events[%d].when", r.WhenPos, i)
		}
		for _, op := range r.Operations {
			mr.Ops = append(mr.Ops, opOf(op))
		}
		for j, f := range r.Data {
			df := mapper.DataField{Key: f.Key, Column: f.Column, From: f.From, IsConst: f.IsConst, Const: f.Const}
			if f.Pos.Line > 0 {
				df.Where = fmt.Sprintf("%s: events[%d].data[%d]", f.Pos, i, j)
			}
			mr.Data = append(mr.Data, df)
		}
		rules = append(rules, mr)
	}
	return rules
}

// opOf maps a validated operation name to its cdc.Op.
func opOf(s string) cdc.Op {
	switch s {
	case "insert":
		return cdc.OpInsert
	case "update":
		return cdc.OpUpdate
	case "delete":
		return cdc.OpDelete
	}
	return 0 // config.Validate refuses anything else; Compile reports 0 too
}

// mapperOptions converts the mapping defaults. systemID is the source's
// IDENTIFY_SYSTEM identifier ("" where no database is involved, e.g. the
// offline mapping test).
func mapperOptions(cfg *config.Config, systemID string, log *slog.Logger) mapper.Options {
	return mapper.Options{
		SystemID: systemID,
		Envelope: mapper.Envelope(cfg.Mapping.Envelope),
		Domain:   cfg.Mapping.Domain,
		Logger:   log,
	}
}

// compileMapper compiles the config's rules; a rule error is a config error
// (exit 2).
func compileMapper(cfg *config.Config, systemID string, log *slog.Logger) (*mapper.Mapper, error) {
	m, err := mapper.Compile(mapperRules(cfg), mapperOptions(cfg, systemID, log))
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	return m, nil
}
