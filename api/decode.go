package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultMaxBody is the largest request body accepted (1 MiB).
const DefaultMaxBody = 1 << 20

// decode reads exactly one JSON object from the body into v, strictly:
// unknown fields, wrong types and trailing data are refused, and so is a
// body over the limit (http.MaxBytesReader stops reading there), a body
// that is not an object (null included), and keys that are not spelled
// exactly as a field or are given twice (checkKeys). allowEmpty accepts an
// empty body (for POSTs whose body is optional) and leaves v as it is.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	body := http.MaxBytesReader(w, r.Body, s.maxBody)
	raw, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errorf(http.StatusBadRequest, CodeBodyTooLarge, "request body is larger than %d bytes", mbe.Limit)
		}
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		if allowEmpty {
			return nil
		}
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "request body is empty: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	// One value only: `{"url":…}{"url":…}` or `{…} trailing` is refused
	// rather than half-read.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "request body must hold exactly one JSON object; found data after it")
	}
	return checkKeys(raw, v)
}

// checkKeys reads the top-level object of raw, which decoded into v
// without error, for what encoding/json lets pass: a body of null (decoded
// as if it were {}), a key matching a field only case-insensitively
// (`"URL"`, or `"ſecret"` by Unicode folding, sets url or secret), and a
// key given twice (the last wins: a second "url" slips past whoever read
// the first). Request types have no nested objects, so the top level is
// all there is to check.
func checkKeys(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return decodeError(err)
	}
	if tok != json.Delim('{') {
		return errorf(http.StatusBadRequest, CodeInvalidBody, "request body must be a JSON object, got %s", jsonKind(tok))
	}
	names := fieldNames(reflect.TypeOf(v))
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return decodeError(err)
		}
		key, _ := tok.(string)
		if !slices.Contains(names, key) {
			for _, n := range names {
				if strings.EqualFold(n, key) {
					return errorf(http.StatusBadRequest, CodeInvalidBody, "unknown field %q: field names are case-sensitive; did you mean %q?", key, n)
				}
			}
			return errorf(http.StatusBadRequest, CodeInvalidBody, "unknown field %q", key)
		}
		if seen[key] {
			return errorf(http.StatusBadRequest, CodeInvalidBody, "field %q is given twice: send each field once", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return decodeError(err)
		}
	}
	return nil
}

// fieldNames are the JSON names of t's fields (t a struct or a pointer to
// one), as encoding/json names them: the tag's name, else the Go name.
func fieldNames(t reflect.Type) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

// jsonKind names the JSON value a first token starts.
func jsonKind(tok json.Token) string {
	switch tok.(type) {
	case nil:
		return "null"
	case bool:
		return "true or false"
	case string:
		return "a string"
	case float64, json.Number:
		return "a number"
	}
	if tok == json.Delim('[') {
		return "an array"
	}
	return fmt.Sprint(tok)
}

// decodeError turns encoding/json's errors into API errors that name the
// field and what was expected.
func decodeError(err error) error {
	var syn *json.SyntaxError
	var ute *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON: the body ends in the middle of a value")
	case errors.As(err, &ute):
		if ute.Field == "" {
			return errorf(http.StatusBadRequest, CodeInvalidBody, "request body must be a JSON object, got %s", ute.Value)
		}
		return errorf(http.StatusBadRequest, CodeInvalidBody, "field %q must be %s, got %s", ute.Field, kindName(ute.Type), ute.Value)
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return errorf(http.StatusBadRequest, CodeInvalidBody, "unknown field %s", f)
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON: %v", err)
}

func kindName(t reflect.Type) string {
	if t == nil {
		return "a value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(kindName(t.Elem()), "a ") + "s"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return kindName(t.Elem())
	}
	return t.String()
}

// parseTime accepts RFC 3339 (with or without fractional seconds) or unix
// seconds, from year 1 to 9999: beyond that a timestamptz parameter would
// overflow or silently match nothing.
func parseTime(s string) (time.Time, error) {
	var t time.Time
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		t = time.Unix(n, 0).UTC()
	} else if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 (2026-01-02T15:04:05Z) nor unix seconds", s)
	}
	if y := t.Year(); y < 1 || y > 9999 {
		return time.Time{}, fmt.Errorf("%q is outside the years 1 to 9999", s)
	}
	return t.UTC(), nil
}

// queryTime is parseTime for a query parameter. The '+' of an RFC 3339
// offset sent without percent-encoding (curl "…?since=2026-01-02T15:04:05+01:00")
// arrives as a space, as a query string reads '+'; no time holds a space,
// so it is read as the '+' it was.
func queryTime(s string) (time.Time, error) {
	if t, err := parseTime(strings.ReplaceAll(s, " ", "+")); err == nil {
		return t, nil
	}
	return parseTime(s) // its error quotes what arrived
}

// query parses the query string strictly: a malformed one, a parameter the
// route does not know (a typo like ?stauts= would otherwise silently list
// everything) or a repeated parameter is refused.
func query(r *http.Request, known ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, CodeInvalidQuery, "malformed query string: %v", err)
	}
	for k, vs := range q {
		if !slices.Contains(known, k) {
			if len(known) == 0 {
				return nil, errorf(http.StatusBadRequest, CodeInvalidQuery, "unknown query parameter %q: this route takes none", k)
			}
			return nil, errorf(http.StatusBadRequest, CodeInvalidQuery, "unknown query parameter %q: this route takes %s", k, strings.Join(known, ", "))
		}
		if len(vs) > 1 {
			return nil, errorf(http.StatusBadRequest, CodeInvalidQuery, "query parameter %q is given %d times", k, len(vs))
		}
	}
	return q, nil
}
