package mapper

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/walhook/walhook/cdc"
)

// equalValue compares two column values by value, the way `IS NOT DISTINCT
// FROM` would: pgoutput sends the whole new row on every update, so a
// column named in SET with its old value looks "sent" but has not changed.
// An Unavailable new value is an unchanged TOAST value: equal by
// definition.
func equalValue(o, n cdc.Value) bool {
	if n.State == cdc.Unavailable {
		return true
	}
	if o.State != n.State {
		return false
	}
	if o.State != cdc.Present {
		return true
	}
	return equalAny(o.V, n.V)
}

func equalAny(a, b any) bool {
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return ok && x == y
	case int64:
		y, ok := b.(int64)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || (math.IsNaN(x) && math.IsNaN(y)))
	case cdc.NonFinite:
		// PostgreSQL's NaN equals NaN, unlike IEEE's.
		y, ok := b.(cdc.NonFinite)
		return ok && x == y
	case cdc.InfiniteTime:
		y, ok := b.(cdc.InfiniteTime)
		return ok && x == y
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		if x == y {
			return true
		}
		// numeric keeps its scale in text: 1.0 and 1.00 are the same value.
		rx, okx := new(big.Rat).SetString(string(x))
		ry, oky := new(big.Rat).SetString(string(y))
		return okx && oky && rx.Cmp(ry) == 0
	case time.Time:
		y, ok := b.(time.Time)
		return ok && x.Equal(y)
	case json.RawMessage:
		y, ok := b.(json.RawMessage)
		return ok && bytes.Equal(x, y)
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y)
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalAny(x[i], y[i]) {
				return false
			}
		}
		return true
	case nil:
		return b == nil
	}
	return reflect.DeepEqual(a, b)
}

// envValue converts a decoded value for expressions: numbers become int64
// or float64 so that <, > and == compare numerically (json.Number is a
// string type; comparing it would be lexical), json becomes maps and
// slices so `new.details.photos` works. A numeric or float NaN or
// infinity becomes the float64 one, so that `new.price > 100` compares as
// IEEE does (NaN is neither above nor below anything, +Inf is above every
// number) instead of failing on a string and stopping the run at a row
// that is valid data. A timestamp 'infinity' or '-infinity' becomes a time
// after or before every time PostgreSQL has, for the same reason.
func envValue(v cdc.Value) any {
	if v.State != cdc.Present {
		return nil
	}
	return envAny(v.V)
}

// envNumber is a numeric or integer column's value n as an int64 when it
// is a whole number that fits — also when written with a fraction of
// zeros (numeric(10,2) sends 4 as "4.00"), so that `new.qty % 2` works on
// every row and not only on those without a scale — else the nearest
// float64: beyond float64's range that is ±Inf (or 0), which strconv
// reports as an error alongside the value.
func envNumber(n json.Number) any {
	s := string(n)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i
	}
	if whole, frac, ok := strings.Cut(s, "."); ok && strings.Trim(frac, "0") == "" {
		if i, err := strconv.ParseInt(whole, 10, 64); err == nil {
			return i
		}
	}
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

// jsonFloat is a json number as a float64, as encoding/json reads it
// (docs/mapping.md: json numbers are floats), except beyond float64's
// range: ±Inf (or 0), where encoding/json fails the whole document.
func jsonFloat(n json.Number) float64 {
	f, _ := strconv.ParseFloat(string(n), 64)
	return f
}

// envJSON converts the numbers of a json value decoded with UseNumber.
func envJSON(v any) any {
	switch x := v.(type) {
	case json.Number:
		return jsonFloat(x)
	case []any:
		for i := range x {
			x[i] = envJSON(x[i])
		}
	case map[string]any:
		for k, e := range x {
			x[k] = envJSON(e)
		}
	}
	return v
}

func envAny(v any) any {
	switch x := v.(type) {
	case json.Number:
		return envNumber(x)
	case cdc.NonFinite:
		f, _ := strconv.ParseFloat(string(x), 64) // NaN, Infinity, -Infinity
		return f
	case cdc.InfiniteTime:
		if x == "-infinity" {
			return beforeAllTime
		}
		return afterAllTime
	case json.RawMessage:
		// Numbers are read as json.Number and converted like a numeric
		// column's: json.Unmarshal into float64 fails the whole document
		// on one number beyond float64's range (valid in jsonb, whose
		// numbers are numeric), which then reached the expression as a
		// string and stopped the run at valid data.
		d := json.NewDecoder(bytes.NewReader(x))
		d.UseNumber()
		var out any
		if err := d.Decode(&out); err != nil {
			// Valid json encoding/json cannot read (nested deeper than
			// its 10,000 levels): unknown, as a NULL is. As a string it
			// failed every expression on it and stopped the run.
			return nil
		}
		return envJSON(out)
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = envAny(x[i])
		}
		return out
	}
	return v
}

// afterAllTime and beforeAllTime stand for a timestamp's 'infinity' and
// '-infinity' in expressions: PostgreSQL's timestamps run from 4714-11-24
// BC to 294276 AD, so these order after and before every one of them, and
// every time an expression computes from now().
var (
	afterAllTime  = time.Date(294277, 1, 1, 0, 0, 0, 0, time.UTC)
	beforeAllTime = time.Date(-4714, 1, 1, 0, 0, 0, 0, time.UTC)
)

// keyString renders a value for an envelope field (auction id, domain).
func keyString(v any) string {
	switch x := v.(type) {
	case string:
		return strings.ToValidUTF8(x, "\uFFFD") // a SQL_ASCII source's bytes; the store's column is text
	case int64:
		return strconv.FormatInt(x, 10)
	case json.Number:
		return string(x)
	case cdc.NonFinite:
		return string(x)
	case cdc.InfiniteTime:
		return string(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case time.Time:
		return string(appendTime(nil, x))
	case json.RawMessage:
		return strings.ToValidUTF8(string(x), "\uFFFD")
	case []byte:
		return base64.StdEncoding.EncodeToString(x) // as a bytea renders in data
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// timeLayout is RFC 3339 with milliseconds, always UTC ("Z");
// noZoneLayout is the same without the zone, for `timestamp without time
// zone` values (cdc.NoZone).
const (
	timeLayout   = "2006-01-02T15:04:05.000Z07:00"
	noZoneLayout = "2006-01-02T15:04:05.000"
)

// appendTime appends t in UTC with a "Z", or, for a value of a column
// without time zone, its wall clock without one.
func appendTime(b []byte, t time.Time) []byte {
	if t.Location() == cdc.NoZone {
		return t.AppendFormat(b, noZoneLayout)
	}
	return t.UTC().AppendFormat(b, timeLayout)
}

// appendValue appends v as JSON. The kinds are those of cdc.Value: numbers
// keep their exact text, times are RFC 3339 UTC with milliseconds, json
// values are passed through as PostgreSQL sent them.
func appendValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case string:
		return appendJSONString(b, x)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case bool:
		return strconv.AppendBool(b, x)
	case float64:
		return appendFloat(b, x)
	case json.Number:
		if isJSONNumber(string(x)) {
			return append(b, x...)
		}
		return appendJSONString(b, string(x)) // NaN, Infinity
	case cdc.NonFinite:
		return appendJSONString(b, string(x))
	case cdc.InfiniteTime:
		return appendJSONString(b, string(x))
	case time.Time:
		b = append(b, '"')
		b = appendTime(b, x)
		return append(b, '"')
	case json.RawMessage:
		if len(x) == 0 {
			return append(b, "null"...)
		}
		if !utf8.Valid(x) {
			// A SQL_ASCII database stores json as it gets the bytes; a
			// body must be UTF-8 (RFC 8259) and so must the store's copy.
			// Invalid bytes sit in strings (JSON's syntax is ASCII) and
			// become U+FFFD, as they do in text columns.
			return append(b, bytes.ToValidUTF8(x, []byte("\uFFFD"))...)
		}
		return append(b, x...)
	case []byte:
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, x)
		return append(b, '"')
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendValue(b, e)
		}
		return append(b, ']')
	}
	j, err := json.Marshal(v)
	if err != nil {
		return appendJSONString(b, keyString(v))
	}
	return append(b, j...)
}

// appendFloat formats like encoding/json; NaN and ±Infinity, which JSON
// cannot carry but float8 can, become the strings PostgreSQL prints.
func appendFloat(b []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(b, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(b, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(b, `"-Infinity"`...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	return strconv.AppendFloat(b, f, format, -1, 64)
}

// isJSONNumber reports whether s is a JSON number literal.
func isJSONNumber(s string) bool {
	if s == "" {
		return false
	}
	i := 0
	if s[0] == '-' {
		i++
	}
	digits := func() int {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i - start
	}
	if i < len(s) && s[i] == '0' {
		i++
	} else if digits() == 0 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string literal. Unlike
// encoding/json it does not escape <, > and & (webhook bodies are not
// HTML), so a message body arrives as written; invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
