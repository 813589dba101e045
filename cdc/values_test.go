package cdc

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/walhook/walhook/internal/pgtest"
)

// Values that are valid data but no finite number have kinds of their
// own, so the mapper can compare them as what they are; a text column
// saying the same stays a string. They stay JSON-ready, as the same text.
func TestValueKindsNonFinite(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, `CREATE DOMAIN price AS numeric(12,2);
		CREATE TABLE s (id int PRIMARY KEY, nnan numeric, ninf numeric, nneg numeric, fnan float8, finf float8, fneg float8,
			f4 float4, p price, narr numeric[], txt text, jempty jsonb, jnull jsonb)`, "public.s")
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `INSERT INTO s VALUES (1, 'NaN', 'Infinity', '-Infinity', 'NaN', 'Infinity', '-Infinity',
		'NaN', 'NaN', '{1.5,NaN,-Infinity}', 'NaN', '{}', '{"amount": null}')`)
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
	if want := `[1,"NaN","Infinity","-Infinity","NaN","Infinity","-Infinity","NaN","NaN",[1.5,"NaN","-Infinity"],"NaN",{},{"amount":null}]`; string(got) != want {
		t.Errorf("as JSON: %s, want %s", got, want)
	}
}
