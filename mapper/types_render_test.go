package mapper_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

// streamBodies creates schema in a fresh database, publishes table, runs
// stmts and returns the data object of the whole-row event of each change.
func streamBodies(t *testing.T, schema, table string, stmts ...string) []json.RawMessage {
	t.Helper()
	m, err := mapper.Compile([]mapper.Rule{{Event: "row.changed", Table: table,
		Ops: []cdc.Op{cdc.OpInsert}, Where: "test"}},
		mapper.Options{SystemID: "1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var out []json.RawMessage
	streamTxs(t, schema, []string{table}, stmts, func(s *cdc.Stream, tx *cdc.Tx) {
		evs, err := m.Map(tx)
		if err != nil {
			t.Fatalf("map: %v", err)
		}
		for i := range evs {
			var body struct{ Data json.RawMessage }
			if err := json.Unmarshal(evs[i].Body("x"), &body); err != nil {
				t.Fatalf("body is not JSON: %v\n%s", err, evs[i].Body("x"))
			}
			b := evs[i].Body("x")
			out = append(out, json.RawMessage(b[strings.Index(string(b), `"data":`)+7:len(b)-1]))
		}
		s.Confirm(tx.EndLSN)
	})
	return out
}

// TestBodyRendersEveryType streams one row holding a value of each type
// (and the edge cases of each) through a real slot and the decoder, and
// compares the data object with what docs/mapping.md says each type
// renders as: exact numbers, the float values JSON has, text as sent
// (char(n) padding, quotes, emoji), base64 bytea, json as written (key
// order, duplicate keys, big numbers, escapes), times with milliseconds
// (microseconds cut), out-of-range times, and PostgreSQL's text for the
// types kept as text; arrays as lists, except those the docs name; a
// generated column left out.
func TestBodyRendersEveryType(t *testing.T) {
	t.Parallel()
	got := streamBodies(t, `CREATE TYPE mood AS ENUM ('sad','happy'); CREATE TYPE pair AS (a int, b text);
	CREATE TABLE x (id int PRIMARY KEY, n1 numeric, n2 numeric, n3 numeric, f4 float4, f8a float8, f8b float8, f8c float8, f4b float4,
	 mo money, bo bool, t1 text, c3 char(5), ba bytea, js json, jb jsonb, ts timestamptz, tsbc timestamptz, tsus timestamp, d date, dbc date,
	 ti time, ttz timetz, iv interval, a1 text[], a2 int[], a3 text[], a4 box[], a5 bytea[], a6 jsonb[], a7 bool[], a8 char(3)[],
	 en mood, co pair, r int4range, mr int4multirange, ip inet, ci cidr, mac macaddr, tv tsvector, xm xml, bi bit(4), vb varbit, pt point, bx box,
	 a9 point[], a10 timetz[], a11 money[], a12 numeric[], a13 uuid[], a14 inet[], a15 float4[], a16 date[], a17 interval[], a18 varbit[],
	 a19 int8[], a20 pair[], g int GENERATED ALWAYS AS (id * 2) STORED)`, "public.x",
		`INSERT INTO x VALUES (1, 1e40, '-0.000', '1.500', '-0', '-0', '1e308', '4.9e-324', '3.4028235e38',
	 '1234.56', true, 'é😀"' || chr(9) || '\', 'ab', '\x00ff', '{"b":1,"a":2,"b":3, "n": 12345678901234567890123, "u":"\u00e9\ud83d\ude00"}', '{"b":1,"a":2,"u":"\u00e9"}',
	 '2024-03-01 12:00:00.123456+05:30', '0044-03-15 12:00:00+00 BC', '2024-03-01 12:00:00.999999', '2024-02-29', '0044-03-15 BC',
	 '23:59:59.999999', '12:00:00+05:30', '1 year 2 mons -3 days 04:05:06.7', '{"NULL",NULL,"a\"b","c,d","e\\f","", " x "}', '{}', '{NULL}',
	 '{(1,1),(0,0);(3,3),(2,2)}', '{"\\x0102",NULL}', '{"{\"a\": 1}"}', '{t,f}', '{ab,c}',
	 'happy', '(1,"x y")', '[1,5)', '{[1,3),[5,7)}', '10.0.0.1/8', '10.0.0.0/8', '08:00:2b:01:02:03', 'a fat cat', '<a>x</a>', B'1010', B'101', '(1,2)', '(1,1),(0,0)',
	 '{"(1,2)","(3,4)"}', '{12:00:00+05:30}', '{1.5,2}', '{1.50,NaN}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{10.0.0.1/32}', '{0.1,NaN}', '{2024-01-01,infinity}', '{"1 day"}', '{101}',
	 '{9007199254740993,-9223372036854775808}', '{"(1,x)"}')`)
	want := `{"id":1,"n1":10000000000000000000000000000000000000000,"n2":0.000,"n3":1.500,"f4":-0,"f8a":-0,"f8b":1e+308,"f8c":5e-324,"f4b":3.4028235e+38,` +
		`"mo":"$1,234.56","bo":true,"t1":"é😀\"\t\\","c3":"ab   ","ba":"AP8=",` +
		`"js":{"b":1,"a":2,"b":3, "n": 12345678901234567890123, "u":"\u00e9\ud83d\ude00"},"jb":{"a": 2, "b": 1, "u": "é"},` +
		`"ts":"2024-03-01T06:30:00.123Z","tsbc":"0044-03-15 12:00:00+00 BC","tsus":"2024-03-01T12:00:00.999","d":"2024-02-29","dbc":"0044-03-15 BC",` +
		`"ti":"23:59:59.999999","ttz":"12:00:00+05:30","iv":"1 year 2 mons -3 days +04:05:06.7",` +
		`"a1":["NULL",null,"a\"b","c,d","e\\f",""," x "],"a2":[],"a3":[null],"a4":["(1,1),(0,0)","(3,3),(2,2)"],"a5":["AQI=",null],"a6":[{"a": 1}],"a7":[true,false],"a8":["ab ","c  "],` +
		`"en":"happy","co":"(1,\"x y\")","r":"[1,5)","mr":"{[1,3),[5,7)}","ip":"10.0.0.1/8","ci":"10.0.0.0/8","mac":"08:00:2b:01:02:03","tv":"'a' 'cat' 'fat'","xm":"<a>x</a>","bi":"1010","vb":"101","pt":"(1,2)","bx":"(1,1),(0,0)",` +
		`"a9":["(1,2)","(3,4)"],"a10":["12:00:00+05:30"],"a11":["$1.50","$2.00"],"a12":[1.50,"NaN"],"a13":["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],"a14":["10.0.0.1"],"a15":[0.1,"NaN"],"a16":["2024-01-01","infinity"],"a17":["1 day"],"a18":["101"],` +
		`"a19":[9007199254740993,-9223372036854775808],"a20":"{\"(1,x)\"}"}`
	if len(got) != 1 {
		t.Fatalf("%d events, want 1", len(got))
	}
	if string(got[0]) != want {
		t.Errorf("data =\n%s\nwant\n%s", got[0], want)
	}
}
