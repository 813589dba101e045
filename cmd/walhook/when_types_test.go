package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

const whenTypesSchema = `CREATE TYPE order_status AS ENUM ('new', 'paid');
CREATE DOMAIN cents AS int8;
CREATE TABLE orders (id int8 PRIMARY KEY, status order_status, total numeric(12,2), price cents,
	placed_at timestamptz, due date, meta jsonb, tags text[], fee money, flag bool, "Display Name" text);
ALTER TABLE orders REPLICA IDENTITY FULL;`

// whenTypesRule is an update rule on orders with when.
func whenTypesRule(event, when string) string {
	return `  - event: ` + event + `
    table: public.orders
    operations: [update]
    when: '` + strings.ReplaceAll(when, "'", "''") + `'
`
}

// An integrator's when: that does not fit the column types — a numeric
// against a string, an enum against a number, a timestamp against a
// string, a date against now() — passed check and run's startup: the
// comparisons stopped the run at the first matching row, and an == of an
// enum with a number was false on every row without a word. check and run
// now refuse them, naming the rule and the columns' types; expressions
// that fit (including a whole or fractional numeric, json of any shape,
// a domain as its base type) pass.
func TestCheckWhenTypesAgainstColumns(t *testing.T) {
	t.Parallel()
	bad := map[string]string{
		"order.total_text":  `new.total > "10"`,
		"order.status_int":  `new.status == 3`,
		"order.placed_text": `new.placed_at > "2024-01-01"`,
		"order.due_now":     `new.due > now()`,
		"order.price_text":  `new.price != old.price && new.price > "100"`,
		"order.fee_number":  `new.fee > 100`,
		"order.flag_text":   `new.flag == "true"`,
	}
	good := []string{
		`new.total > 10 && new.total % 2 == 0.5`,
		`new.total % 2.5 == 0`,
		`new.status == "paid" && old.status != new.status`,
		`new.placed_at > now() - duration("24h") && new.placed_at > date("2024-01-01")`,
		`new.due > "2024-06-01"`,
		`new.meta.amount > 100 && len(new.meta.photos) > 0 && type(new.meta.x) == "float"`,
		`"vip" in new.tags && len(new.tags) > 1`,
		`new.price > 100 && new.price % 2 == 0`,
		`new["Display Name"] != nil && new["Display Name"] startsWith "A"`,
		`new.fee != old.fee && !new.flag`,
		// A list (a built-in array) beside the text of another built-in
		// type (money, interval, inet): both at once.
		`"vip" in new.tags && new.fee == "$1.00"`,
	}
	var events strings.Builder
	for ev, when := range bad {
		events.WriteString(whenTypesRule(ev, when))
	}
	for i, when := range good {
		events.WriteString(whenTypesRule("order.good_"+string(rune('a'+i)), when))
	}
	db := newRunDB(t, whenTypesSchema)
	file, cfg := runConfig(t, []byte("source:\n  dsn: set-by-test\nevents:\n"+events.String()), db.settings())
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	for ev, when := range bad {
		ckWantLines(t, out, `^FAIL  rule: .*events\[\d+\]\.when: event `+ev+`: `+regexp.QuoteMeta(when)+` does not fit the types of its columns in public\.orders \(.*\): .*mismatched types`)
	}
	ckNoLines(t, out, `.*event order\.good_`)

	db.setup(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, errOut, code := runCLI(t, ctx, "run", "--config", file)
	if code == 0 || !strings.Contains(errOut, `event order.status_int: new.status == 3 does not fit the types of its columns in public.orders (status order_status)`) {
		t.Fatalf("run exit %d, want it to refuse to start naming the enum rule:\n%s", code, errOut)
	}
}

// A when: comparing an enum column with a string that is not one of its
// labels — a typo ("payed"), another case ("Paid") — loaded and passed
// check, and the rule never fired (or, with !=, always did): enums are
// strings in when:, and a string no row holds equals none. check and
// run's startup now refuse it, listing the labels; a domain over the enum
// counts as the enum. In a list with other values (in ["new", "Paid"])
// the comparison is not the same on every row, as the refusal said: the
// entry matches none.
func TestCheckWhenEnumLabels(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, whenTypesSchema+`
CREATE DOMAIN order_state AS order_status;
CREATE TABLE shipments (id int8 PRIMARY KEY, state order_state, label text);
ALTER TABLE shipments REPLICA IDENTITY FULL;`)
	events := whenTypesRule("order.paid", `new.status == "payed"`) +
		whenTypesRule("order.new_or_paid", `new.status in ["new", "Paid"]`) +
		whenTypesRule("order.status_set", `new.status != old.status && new.status == "paid" && new["Display Name"] != "payed"`) +
		`  - event: shipment.paid
    table: public.shipments
    operations: [insert]
    when: '"PAID" == new.state'
`
	file, _ := runConfig(t, []byte("source:\n  dsn: set-by-test\nevents:\n"+events), db.settings())
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`^FAIL  rule: .*events\[0\]\.when: event order\.paid: compares new\.status with "payed", which is not a value of its enum order_status in public\.orders \("new", "paid"\), so the comparison is the same on every row; write one of its values \(they are case-sensitive\)$`,
		`^FAIL  rule: .*events\[1\]\.when: event order\.new_or_paid: compares new\.status with "Paid", which is not a value of its enum order_status in public\.orders \("new", "paid"\), so that entry of the list matches no row; write one of its values`,
		`^FAIL  rule: .*events\[3\]\.when: event shipment\.paid: compares new\.state with "PAID", which is not a value of its enum order_state in public\.shipments \("new", "paid"\)`)
	ckNoLines(t, out, `.*order\.status_set`)
}

// An array of an enum or an extension type (mood[], citext[]) reaches
// when: as PostgreSQL's text ("{happy,sad}"), not as a list, so `"happy"
// in new.moods` is refused, rightly: it would stop the run. But the
// refusal said only "mismatched types string and string", which reads as
// nonsense beside a column whose type says array. It says the array is
// text in when:.
func TestCheckWhenTypesNamesATextArray(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, `CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE people (id int8 PRIMARY KEY, moods mood[], emails citext[], tags text[]);`)
	events := `  - event: person.happy
    table: public.people
    operations: [insert]
    when: '"happy" in new.moods'
  - event: person.mailed
    table: public.people
    operations: [insert]
    when: '"vip@example.com" in new.emails && "vip" in new.tags'
  - event: person.tagged
    table: public.people
    operations: [insert]
    when: '"vip" in new.tags && new.moods != nil'
`
	file, _ := runConfig(t, []byte("source:\n  dsn: set-by-test\nevents:\n"+events), db.settings())
	out, _, code := pubCLI(t, "check", "--config", file)
	if code != 1 {
		t.Fatalf("check exit %d, want 1", code)
	}
	ckWantLines(t, out,
		`FAIL  rule: .*events\[0\]\.when: event person\.happy: .*\(moods mood\[\]\): .*; moods is an array of a type created in the database or by an extension, which when: reads as PostgreSQL's text \("\{a,b\}"\), not as a list: invalid operation`,
		`FAIL  rule: .*events\[1\]\.when: event person\.mailed: .*\(emails citext\[\], tags text\[\]\): .*; emails is an array of a type created in the database or by an extension`)
	ckNoLines(t, out, `.*person\.mailed.*tags is an array`, `.*person\.tagged`)
}

// A column named "-" (a spreadsheet import's) read in when: as new["-"]
// was refused as "has no field -": the type check names columns by
// struct tags, and expr takes the tag "-" for a hidden field. Such a rule
// works at run time, so check and run's start take it.
func TestCheckWhenTypesColumnNamedDash(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, `CREATE TABLE sheet (id int8 PRIMARY KEY, "-" text, n int);`)
	events := `  - event: sheet.dash
    table: public.sheet
    operations: [insert]
    when: 'new["-"] == "x" && new.n > 1'
`
	file, _ := runConfig(t, []byte("source:\n  dsn: set-by-test\nevents:\n"+events), db.settings())
	out, _, _ := pubCLI(t, "check", "--config", file)
	ckWantLines(t, out, `ok    rules: `)
	ckNoLines(t, out, `FAIL  rule: `)
}
