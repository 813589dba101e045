package cdc

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// Values that are valid data but no finite number or time have kinds of
// their own, so the mapper can compare them as what they are; a text
// column saying the same stays a string, and so does a date (dates are
// text). They stay JSON-ready, as the same text.
func TestValueKindsNonFinite(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, `CREATE DOMAIN price AS numeric(12,2);
		CREATE TABLE s (id int PRIMARY KEY, nnan numeric, ninf numeric, nneg numeric, fnan float8, finf float8, fneg float8,
			f4 float4, p price, narr numeric[], txt text, jempty jsonb, jnull jsonb,
			tsinf timestamptz, tsneg timestamptz, tinf timestamp, dinf date, tsarr timestamptz[], tinftxt text)`, "public.s")
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `INSERT INTO s VALUES (1, 'NaN', 'Infinity', '-Infinity', 'NaN', 'Infinity', '-Infinity',
		'NaN', 'NaN', '{1.5,NaN,-Infinity}', 'NaN', '{}', '{"amount": null}',
		'infinity', '-infinity', 'infinity', 'infinity', '{2024-03-01 10:00:00+00,-infinity}', 'infinity')`)
	c := b.nextTx(t).Changes[0]
	want := map[string]any{
		"nnan": NonFinite("NaN"), "ninf": NonFinite("Infinity"), "nneg": NonFinite("-Infinity"),
		"fnan": NonFinite("NaN"), "finf": NonFinite("Infinity"), "fneg": NonFinite("-Infinity"),
		"f4": NonFinite("NaN"), "p": NonFinite("NaN"),
		"narr": []any{json.Number("1.5"), NonFinite("NaN"), NonFinite("-Infinity")},
		"txt":  "NaN",
		// json is passed on as the document; a missing or null key is the
		// mapper's to read.
		"jempty": json.RawMessage(`{}`), "jnull": json.RawMessage(`{"amount": null}`),
		"tsinf": InfiniteTime("infinity"), "tsneg": InfiniteTime("-infinity"), "tinf": InfiniteTime("infinity"),
		"dinf": "infinity", "tsarr": []any{time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC), InfiniteTime("-infinity")},
		"tinftxt": "infinity",
	}
	for name, w := range want {
		if got := col(t, c, c.New, name); !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %#v (%T), want %#v", name, got, got, w)
		}
	}
	got, err := json.Marshal(valuesOf(c.New))
	if err != nil {
		t.Fatalf("values are not JSON-ready: %v", err)
	}
	if want := `[1,"NaN","Infinity","-Infinity","NaN","Infinity","-Infinity","NaN","NaN",[1.5,"NaN","-Infinity"],"NaN",{},{"amount":null},"infinity","-infinity","infinity","infinity",["2024-03-01T10:00:00Z","-infinity"],"infinity"]`; string(got) != want {
		t.Errorf("as JSON: %s, want %s", got, want)
	}
}

// Arrays of built-in types pgx's type map does not know are lists too, as
// docs/mapping.md says of arrays (their elements are PostgreSQL's text,
// like the scalar columns of those types); they stayed the array's text.
func TestValueKindsArraysOfTextTypes(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, `CREATE TYPE pair AS (a int, b text); CREATE TABLE a (id int PRIMARY KEY, mo money[], tz timetz[], m8 macaddr8[], tq tsquery[],
			mr int4multirange[], nmr nummultirange[], cp pair[])`, "public.a")
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `SET lc_monetary = 'C'; INSERT INTO a VALUES (1, '{1.50,NULL}', '{12:00:00+05:30,"23:59:59.999999-01"}',
		'{08:00:2b:01:02:03:04:05}', '{"fat & cat"}', '{"{[1,3),[5,7)}","{}"}', '{"{[1.5,2)}"}', '{"(1,x)"}')`)
	c := b.nextTx(t).Changes[0]
	want := map[string]any{
		"mo": []any{"$1.50", nil}, "tz": []any{"12:00:00+05:30", "23:59:59.999999-01"},
		"m8": []any{"08:00:2b:01:02:03:04:05"}, "tq": []any{"'fat' & 'cat'"},
		"mr": []any{"{[1,3),[5,7)}", "{}"}, "nmr": []any{"{[1.5,2)}"},
		// Arrays of types created in the database stay the array's text.
		"cp": `{"(1,x)"}`,
	}
	for name, w := range want {
		if got := col(t, c, c.New, name); !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %#v (%T), want %#v", name, got, got, w)
		}
	}
}

// The session settings text values are decoded by are the only ones of
// their names in the startup message: a DSN's `datestyle=SQL` or the
// environment's PGTZ (which pgconn reads as `timezone`) were sent beside
// walhook's DateStyle and TimeZone, GUC names are case-insensitive, and
// the server kept whichever came last in the message, an order Go's map
// iteration picks anew for each connection (dates then arrived as
// "03/01/2024", or timestamptz text in another zone).
func TestReplicationConfigOwnsTheTextSettings(t *testing.T) {
	t.Setenv("PGTZ", "Europe/Berlin")
	cfg, err := replicationConfig("postgres://u@localhost/db?datestyle=SQL,DMY&intervalstyle=iso_8601&EXTRA_FLOAT_DIGITS=0&Bytea_Output=escape&application_name=x")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"datestyle": "ISO", "intervalstyle": "postgres", "extra_float_digits": "3", "timezone": "UTC", "bytea_output": "hex"}
	seen := map[string]int{}
	for k, v := range cfg.RuntimeParams {
		lk := strings.ToLower(k)
		if w, ok := want[lk]; ok {
			seen[lk]++
			if v != w {
				t.Errorf("%s = %q, want %q", k, v, w)
			}
		}
	}
	for k := range want {
		if seen[k] != 1 {
			t.Errorf("%s is sent %d times: %v", k, seen[k], cfg.RuntimeParams)
		}
	}
	if cfg.RuntimeParams["application_name"] != "x" {
		t.Errorf("application_name = %q", cfg.RuntimeParams["application_name"])
	}
}
