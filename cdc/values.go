package cdc

import (
	"encoding/hex"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// valueDecoder turns pgoutput's text-format column values into the
// JSON-ready kinds documented on Value. The common scalar types have
// hand-written fast paths (this runs once per column of every row);
// arrays go through pgx's type map (newTypeMap), which knows every
// built-in array type a table can hold and its delimiter. Text output is stable because the replication session
// runs with DateStyle=ISO, IntervalStyle=postgres, extra_float_digits=3 and
// TimeZone=UTC (see replicationConfig).
type valueDecoder struct {
	tm *pgtype.Map
	// base maps a user-defined type's OID to the built-in type a domain
	// over it ends in (through domains of domains), 0 for a type that is
	// not a domain: a domain's values decode as its base type's. Filled
	// as Relation messages name new types (see session.resolveDomains).
	base map[uint32]uint32
}

func (d *valueDecoder) decode(oid uint32, b []byte) any {
	switch oid {
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.UUIDOID:
		return string(b)
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.OIDOID, pgtype.XIDOID:
		if n, ok := parseInt(b); ok {
			return n
		}
	case pgtype.Int8OID:
		// json.Number: JSON consumers in JavaScript lose precision above
		// 2^53, so int8 stays the server's exact digits.
		if _, ok := parseInt(b); ok {
			return json.Number(b)
		}
	case pgtype.NumericOID:
		if isJSONNumber(b) {
			return json.Number(b)
		}
		if isNonFinite(b) {
			return NonFinite(b)
		}
	case pgtype.BoolOID:
		if len(b) == 1 {
			return b[0] == 't'
		}
	case pgtype.Float4OID, pgtype.Float8OID:
		if isJSONNumber(b) {
			if f, err := strconv.ParseFloat(string(b), 64); err == nil {
				return f
			}
		}
		if isNonFinite(b) {
			return NonFinite(b)
		}
	case pgtype.TimestamptzOID:
		if t, ok := parseTimestamp(b); ok {
			return t
		}
		if isInfinity(b) {
			return InfiniteTime(b)
		}
		return string(b) // BC dates, years past 9999
	case pgtype.TimestampOID:
		if t, ok := parseTimestamp(b); ok {
			return t.In(NoZone)
		}
		if isInfinity(b) {
			return InfiniteTime(b)
		}
		return string(b)
	case pgtype.DateOID:
		return string(b)
	case pgtype.JSONOID, pgtype.JSONBOID:
		return json.RawMessage(append([]byte(nil), b...))
	case pgtype.ByteaOID:
		if len(b) >= 2 && b[0] == '\\' && b[1] == 'x' {
			out := make([]byte, hex.DecodedLen(len(b)-2))
			if _, err := hex.Decode(out, b[2:]); err == nil {
				return out
			}
		}
	default:
		if base := d.base[oid]; base != 0 {
			return d.decode(base, b)
		}
		if v, ok := d.array(oid, b); ok {
			return v
		}
	}
	// Unknown OIDs (enums, domains over them, arrays of domains, extension
	// types) and anything that did not parse keep the server's text.
	return string(b)
}

// textArrays are the built-in array types a table can hold that pgx's type
// map does not know, with their element types: their elements stay
// PostgreSQL's text, like scalar columns of those types, and the arrays
// are lists like every other one-dimensional array (they were the
// array's text). All use ',' as delimiter.
var textArrays = []struct {
	name      string
	oid, elem uint32
}{
	{"_money", 791, 790},
	{"_timetz", 1270, 1266},
	{"_macaddr8", 775, 774},
	{"_tsquery", 3645, 3615},
	{"_refcursor", 2201, 1790},
	{"_txid_snapshot", 2949, 2970},
	{"_int4multirange", 6150, 4451},
	{"_nummultirange", 6151, 4532},
	{"_tsmultirange", 6152, 4533},
	{"_tstzmultirange", 6153, 4534},
	{"_datemultirange", 6155, 4535},
	{"_int8multirange", 6157, 4536},
}

// newTypeMap returns pgx's type map with textArrays added.
func newTypeMap() *pgtype.Map {
	tm := pgtype.NewMap()
	for _, a := range textArrays {
		elem := &pgtype.Type{Name: a.name[1:], OID: a.elem, Codec: pgtype.TextCodec{}}
		tm.RegisterType(&pgtype.Type{Name: a.name, OID: a.oid, Codec: &pgtype.ArrayCodec{ElementType: elem}})
	}
	return tm
}

// array decodes a one-dimensional array of a type pgx knows into []any
// whose elements are decoded like scalar columns (nil for NULL elements).
// Multi-dimensional arrays and arrays of unknown element types stay text.
func (d *valueDecoder) array(oid uint32, b []byte) ([]any, bool) {
	// Several dimensions ({{1,2},{3,4}}) or explicit bounds ([0:2]={…})
	// would be flattened by the scan: they keep the server's text.
	if d.tm == nil || len(b) < 2 || b[0] == '[' || b[1] == '{' {
		return nil, false
	}
	t, ok := d.tm.TypeForOID(oid)
	if !ok {
		return nil, false
	}
	ac, ok := t.Codec.(*pgtype.ArrayCodec)
	if !ok || ac.ElementType == nil {
		return nil, false
	}
	var elems []*string
	if err := d.tm.Scan(oid, pgtype.TextFormatCode, b, &elems); err != nil {
		return nil, false
	}
	out := make([]any, len(elems))
	for i, e := range elems {
		if e != nil {
			out[i] = d.decode(ac.ElementType.OID, []byte(*e))
		}
	}
	return out, true
}

func parseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	neg := b[0] == '-'
	i := 0
	if neg {
		i = 1
		if len(b) == 1 {
			return 0, false
		}
	}
	var n uint64
	for ; i < len(b); i++ {
		c := b[i] - '0'
		if c > 9 {
			return 0, false
		}
		if n > (1<<63)/10 {
			return 0, false
		}
		n = n*10 + uint64(c)
	}
	if neg {
		if n > 1<<63 {
			return 0, false
		}
		return -int64(n), true
	}
	if n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

// isNonFinite reports whether b is how PostgreSQL prints a numeric or
// float that is not a finite number (numeric has the infinities since
// PostgreSQL 14).
func isNonFinite(b []byte) bool {
	switch string(b) {
	case "NaN", "Infinity", "-Infinity":
		return true
	}
	return false
}

// isInfinity reports whether b is how PostgreSQL prints a timestamp or
// timestamptz 'infinity' or '-infinity'.
func isInfinity(b []byte) bool {
	return string(b) == "infinity" || string(b) == "-infinity"
}

// isJSONNumber reports whether b is a number in JSON syntax, which is what
// PostgreSQL prints for every finite numeric and float (no leading '+', no
// bare '.5'); NaN and the infinities are not.
func isJSONNumber(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	i := 0
	if b[0] == '-' {
		i++
	}
	digits := func() int {
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i - s
	}
	if i >= len(b) {
		return false
	}
	if b[i] == '0' {
		i++
	} else if digits() == 0 {
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}

// NoZone is the location of a `timestamp without time zone` value: its
// wall clock is read as UTC, so it compares with other times (and
// `changed:` sees it equal) as if it were UTC, and the location marks it,
// so that it renders without a zone: the column does not say which zone
// its values are in, and a "Z" would claim UTC.
var NoZone = time.FixedZone("", 0)

// parseTimestamp parses the ISO output of timestamp and timestamptz:
// "YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]]". The result is in UTC; a
// timestamp without time zone is taken as UTC (the session's TimeZone).
func parseTimestamp(b []byte) (time.Time, bool) {
	if len(b) < 19 || b[4] != '-' || b[7] != '-' || b[10] != ' ' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	num := func(s []byte) int {
		n := 0
		for _, c := range s {
			if c < '0' || c > '9' {
				return -1
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	year, month, day := num(b[0:4]), num(b[5:7]), num(b[8:10])
	hour, min, sec := num(b[11:13]), num(b[14:16]), num(b[17:19])
	if year < 0 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 24 || min < 0 || min > 59 || sec < 0 || sec > 60 {
		return time.Time{}, false
	}
	i, nsec := 19, 0
	if i < len(b) && b[i] == '.' {
		i++
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == s || i-s > 9 {
			return time.Time{}, false
		}
		nsec = num(b[s:i])
		for k := i - s; k < 9; k++ {
			nsec *= 10
		}
	}
	offset := 0
	if i < len(b) {
		sign := 1
		switch b[i] {
		case '+':
		case '-':
			sign = -1
		default:
			return time.Time{}, false // " BC" and anything else
		}
		i++
		parts := [3]int{}
		for p := 0; p < 3 && i < len(b); p++ {
			if p > 0 {
				if b[i] != ':' {
					return time.Time{}, false
				}
				i++
			}
			if len(b)-i < 2 {
				return time.Time{}, false
			}
			if parts[p] = num(b[i : i+2]); parts[p] < 0 {
				return time.Time{}, false
			}
			i += 2
		}
		if i != len(b) {
			return time.Time{}, false
		}
		offset = sign * (parts[0]*3600 + parts[1]*60 + parts[2])
	}
	t := time.Date(year, time.Month(month), day, hour, min, sec, nsec, time.UTC)
	return t.Add(-time.Duration(offset) * time.Second), true
}

var (
	listTypesOnce sync.Once
	listTypesMu   sync.Mutex
	listTypesMap  *pgtype.Map
)

// ListType reports whether a column of the built-in type oid reaches a
// rule's when: as a list: a one-dimensional array walhook decodes
// (valueDecoder.array). Other built-in types it does not decode (interval,
// inet, time, money…) are PostgreSQL's text.
func ListType(oid uint32) bool {
	listTypesOnce.Do(func() { listTypesMap = newTypeMap() })
	listTypesMu.Lock()
	defer listTypesMu.Unlock()
	t, ok := listTypesMap.TypeForOID(oid)
	if !ok {
		return false
	}
	ac, ok := t.Codec.(*pgtype.ArrayCodec)
	return ok && ac.ElementType != nil
}
