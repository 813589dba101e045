// Package config turns walhook.yaml into a typed, defaulted and validated
// Config.
//
// Loading runs in a fixed order so every message can point at the file:
// parse to a *yaml.Node tree (positions kept) → refuse aliases that refer
// to themselves or expand the document beyond 100,000 nodes → expand
// ${VAR} and ${VAR:-default} in scalar values only (never in keys or
// comments, so a variable cannot invent structure) → decode strictly by walking the node
// tree ourselves (unknown keys, wrong types and bad durations are errors with
// file:line:col and the key path) → fill defaults for keys that were not
// written (an explicit 0 stays 0) → Validate. All problems found are
// returned together as *Errors, one per line, so an operator fixes a file in
// one pass instead of one error per run.
//
// config imports nothing of ours: cmd/walhook converts a Config into each
// working package's own options.
package config
