package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a config file.
type Error struct {
	Pos  Pos
	Path string // key path, e.g. "events[3].table"; "" for file-level problems
	Msg  string
}

// Error formats as "file:line:col: path: msg".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Pos.String())
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found while loading one file, in file order.
type Errors struct {
	Errs []*Error
}

// Error prints one problem per line.
func (e *Errors) Error() string {
	lines := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (e *Errors) Unwrap() []error {
	out := make([]error, len(e.Errs))
	for i, err := range e.Errs {
		out[i] = err
	}
	return out
}

// String formats a position as "file:line:col" (or "file:line" when the
// column is unknown).
func (p Pos) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Column == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// collector gathers errors during one Load.
type collector struct {
	file  string
	errs  []*Error
	quiet map[string]bool // paths already reported; later errors there are noise
	// rulesOnly: an unset variable outside events and mapping is no
	// error (ParseRules).
	rulesOnly bool
}

// silence drops later errors at path and below it.
func (c *collector) silence(path string) {
	if c.quiet == nil {
		c.quiet = map[string]bool{}
	}
	c.quiet[path] = true
}

func (c *collector) silenced(path string) bool {
	for p := range c.quiet {
		if path == p || strings.HasPrefix(path, p+".") || strings.HasPrefix(path, p+"[") {
			return true
		}
	}
	return false
}

func (c *collector) add(pos Pos, path, format string, args ...any) {
	if path != "" && c.silenced(path) {
		return
	}
	if pos.File == "" {
		pos.File = c.file
	}
	c.errs = append(c.errs, &Error{Pos: pos, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// err returns nil or *Errors sorted by position; the same message at the
// same place is reported once.
func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	sort.SliceStable(c.errs, func(i, j int) bool {
		a, b := c.errs[i].Pos, c.errs[j].Pos
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	out := c.errs[:0]
	seen := map[string]bool{}
	for _, e := range c.errs {
		if k := e.Error(); !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	return &Errors{Errs: out}
}
