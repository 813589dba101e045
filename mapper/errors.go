package mapper

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; every RuleError wraps one of them.
var (
	// ErrInvalidRule: a rule is malformed (missing table, bad operation, …).
	ErrInvalidRule = errors.New("invalid rule")
	// ErrExpression: a when expression does not compile or type-check.
	ErrExpression = errors.New("invalid expression")
	// ErrUnknownTable: a rule names a table the source does not have.
	ErrUnknownTable = errors.New("unknown table")
	// ErrUnknownColumn: a rule names a column its table does not have.
	ErrUnknownColumn = errors.New("unknown column")
	// ErrGeneratedColumn: a rule reads a generated column, which logical
	// replication does not send (errors.Is ErrUnknownColumn too).
	ErrGeneratedColumn = fmt.Errorf("%w: generated", ErrUnknownColumn)
	// ErrNeedsOldValues: a rule reads old values on a table whose REPLICA
	// IDENTITY does not send them.
	ErrNeedsOldValues = errors.New("old values not available")
	// ErrConflict: two rules define one event type with different body
	// shapes.
	ErrConflict = errors.New("conflicting event definition")
	// ErrEvaluation: an expression failed at run time on a row.
	ErrEvaluation = errors.New("evaluation failed")
)

// RuleError is a problem with one rule: Where is the rule's place in the
// config, Field the rule key ("table", "when", "data[2]", …; may be empty).
type RuleError struct {
	Where string
	Field string
	Event string
	Err   error
}

func (e *RuleError) Error() string {
	var b strings.Builder
	if e.Where != "" {
		b.WriteString(e.Where)
		if e.Field != "" {
			b.WriteString(".")
			b.WriteString(e.Field)
		}
		b.WriteString(": ")
	} else if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	if e.Event != "" {
		fmt.Fprintf(&b, "event %s: ", e.Event)
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *RuleError) Unwrap() error { return e.Err }

// errorList collects rule errors so all of them are reported together.
type errorList []error

func (l *errorList) add(where, field, event string, sentinel error, format string, args ...any) {
	*l = append(*l, &RuleError{
		Where: where, Field: field, Event: event,
		Err: &causeError{msg: fmt.Sprintf(format, args...), cause: sentinel},
	})
}

// causeError reads as its message alone but matches its sentinel cause with
// errors.Is, so messages stay plain sentences.
type causeError struct {
	msg   string
	cause error
}

func (e *causeError) Error() string { return e.msg }
func (e *causeError) Unwrap() error { return e.cause }

func (l errorList) err() error { return errors.Join(l...) }
