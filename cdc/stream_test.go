package cdc

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

const itemSchema = `CREATE TABLE item (id int8 PRIMARY KEY, status text NOT NULL, note text, body text);`

func val(v Value) any {
	if v.State != Present {
		return v.State
	}
	return v.V
}

func col(t *testing.T, c Change, row []Value, name string) any {
	t.Helper()
	i := c.Rel.ColumnIndex(name)
	if i < 0 {
		t.Fatalf("no column %s in %v", name, c.Rel.Columns)
	}
	return val(row[i])
}

func TestInsertUpdateDelete(t *testing.T) {
	t.Parallel()
	for _, identity := range []string{"DEFAULT", "FULL"} {
		t.Run(identity, func(t *testing.T) {
			t.Parallel()
			dsn := pgtest.Shared(t).NewDatabase(t)
			setupDB(t, dsn, itemSchema+`ALTER TABLE item REPLICA IDENTITY `+identity, "public.item")
			b := startStream(t, dsn, 0, nil)

			exec(t, dsn, `INSERT INTO item VALUES (1, 'new', 'n1')`)
			exec(t, dsn, `UPDATE item SET status = 'open' WHERE id = 1`)
			exec(t, dsn, `UPDATE item SET id = 2 WHERE id = 1`)
			exec(t, dsn, `DELETE FROM item WHERE id = 2`)

			ins := b.nextTx(t)
			if len(ins.Changes) != 1 || ins.Changes[0].Op != OpInsert || ins.Xid == 0 || ins.EndLSN <= ins.CommitLSN || ins.CommitTime.IsZero() {
				t.Fatalf("insert tx = %+v", ins)
			}
			c := ins.Changes[0]
			if c.Rel.Table() != "public.item" || col(t, c, c.New, "id") != json.Number("1") || col(t, c, c.New, "status") != "new" {
				t.Fatalf("insert change = %+v", c)
			}
			if c.Old != nil {
				t.Fatalf("insert has old row %v", c.Old)
			}

			up := b.nextTx(t).Changes[0]
			if up.Op != OpUpdate || col(t, up, up.New, "status") != "open" {
				t.Fatalf("update = %+v", up)
			}
			if identity == "DEFAULT" {
				if up.Old != nil {
					t.Fatalf("DEFAULT identity, key unchanged: want no old row, got %v", up.Old)
				}
			} else if up.OldKeyOnly || col(t, up, up.Old, "status") != "new" || col(t, up, up.Old, "note") != "n1" {
				t.Fatalf("FULL identity old row = %v (keyOnly %v)", up.Old, up.OldKeyOnly)
			}

			key := b.nextTx(t).Changes[0]
			if identity == "DEFAULT" {
				if !key.OldKeyOnly || col(t, key, key.Old, "id") != json.Number("1") || col(t, key, key.Old, "status") != Absent {
					t.Fatalf("DEFAULT key change old = %v keyOnly=%v", key.Old, key.OldKeyOnly)
				}
			} else if col(t, key, key.Old, "id") != json.Number("1") || col(t, key, key.Old, "status") != "open" {
				t.Fatalf("FULL key change old = %v", key.Old)
			}
			if col(t, key, key.New, "id") != json.Number("2") {
				t.Fatalf("key change new = %v", key.New)
			}

			del := b.nextTx(t).Changes[0]
			if del.Op != OpDelete || del.New != nil || col(t, del, del.Old, "id") != json.Number("2") {
				t.Fatalf("delete = %+v", del)
			}
			if identity == "DEFAULT" && (!del.OldKeyOnly || col(t, del, del.Old, "note") != Absent) {
				t.Fatalf("DEFAULT delete old = %v", del.Old)
			}
			if identity == "FULL" && (del.OldKeyOnly || col(t, del, del.Old, "note") != "n1") {
				t.Fatalf("FULL delete old = %v", del.Old)
			}
		})
	}
}

// randomText is incompressible, so PostgreSQL really moves it out of line
// (TOAST) instead of compressing it inline.
const randomTextSQL = `(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 320))`

func TestUnchangedToast(t *testing.T) {
	t.Parallel()
	for _, identity := range []string{"DEFAULT", "FULL"} {
		t.Run(identity, func(t *testing.T) {
			t.Parallel()
			dsn := pgtest.Shared(t).NewDatabase(t)
			setupDB(t, dsn, itemSchema+`ALTER TABLE item REPLICA IDENTITY `+identity, "public.item")
			exec(t, dsn, `INSERT INTO item VALUES (1, 'new', 'n', `+randomTextSQL+`)`)
			var body string
			queryRow(t, dsn, `SELECT body FROM item`, &body)
			if len(body) < 10000 {
				t.Fatalf("body is only %d bytes", len(body))
			}
			b := startStream(t, dsn, 0, nil)
			if ins := b.nextTx(t).Changes[0]; ins.Op != OpInsert || col(t, ins, ins.New, "body") != body {
				t.Fatalf("insert = %+v", ins)
			}
			exec(t, dsn, `UPDATE item SET status = 'open'`)
			up := b.nextTx(t).Changes[0]
			if up.Op != OpUpdate {
				t.Fatalf("got %v, want the update", up.Op)
			}
			got := up.New[up.Rel.ColumnIndex("body")]
			if identity == "DEFAULT" {
				if got.State != Unavailable {
					t.Fatalf("DEFAULT identity: unchanged TOAST body = %v, want Unavailable", got)
				}
				return
			}
			if got.State != Present || got.V != body {
				t.Fatalf("FULL identity: unchanged TOAST body not filled from old row (state %v)", got.State)
			}
		})
	}
}

func TestSetSameValue(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema+`ALTER TABLE item REPLICA IDENTITY FULL; INSERT INTO item VALUES (1, 'open', NULL)`, "public.item")
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `UPDATE item SET status = status`)
	up := b.nextTx(t).Changes[0]
	// cdc passes the change on; deciding "nothing changed" is the mapper's job.
	if up.Op != OpUpdate || !reflect.DeepEqual(up.Old, up.New) || col(t, up, up.New, "status") != "open" || col(t, up, up.New, "note") != Null {
		t.Fatalf("old %v new %v", up.Old, up.New)
	}
}

func TestDDLMidStream(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `INSERT INTO item VALUES (1, 'a')`)
	r1 := b.nextTx(t).Changes[0].Rel

	exec(t, dsn, `ALTER TABLE item ADD COLUMN price numeric(12,2) DEFAULT 1.50; INSERT INTO item VALUES (2, 'b')`)
	c2 := b.nextTx(t).Changes[0]
	if c2.Rel == r1 || col(t, c2, c2.New, "price") != json.Number("1.50") {
		t.Fatalf("after ADD COLUMN: rel %p (old %p), row %v", c2.Rel, r1, c2.New)
	}
	if r1.ColumnIndex("price") != -1 {
		t.Fatal("the old *Relation was changed in place")
	}

	exec(t, dsn, `ALTER TABLE item DROP COLUMN note; ALTER TABLE item RENAME COLUMN status TO state; INSERT INTO item VALUES (3, 'c')`)
	c3 := b.nextTx(t).Changes[0]
	if c3.Rel.ColumnIndex("note") != -1 || c3.Rel.ColumnIndex("status") != -1 || col(t, c3, c3.New, "state") != "c" || len(c3.New) != 4 {
		t.Fatalf("after DROP/RENAME: columns %v row %v", c3.Rel.Columns, c3.New)
	}
}

func TestTruncateAndRollback(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema+`CREATE TABLE other (id int PRIMARY KEY);`, "public.item", "public.other")
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `BEGIN; INSERT INTO item VALUES (1, 'rolled back'); ROLLBACK`)
	exec(t, dsn, `INSERT INTO item VALUES (2, 'a'), (3, 'b')`)
	tx := b.nextTx(t)
	if len(tx.Changes) != 2 || col(t, tx.Changes[0], tx.Changes[0].New, "id") != json.Number("2") {
		t.Fatalf("first transaction after the rollback: %+v", tx.Changes)
	}
	if tx.Changes[0].Position != 0 || tx.Changes[1].Position != 1 || tx.Changes[1].LSN <= tx.Changes[0].LSN {
		t.Fatalf("positions/LSNs %d %s, %d %s", tx.Changes[0].Position, tx.Changes[0].LSN, tx.Changes[1].Position, tx.Changes[1].LSN)
	}
	exec(t, dsn, `TRUNCATE item, other`)
	tr := b.nextTx(t).Changes[0]
	if tr.Op != OpTruncate || len(tr.Rels) != 2 || tr.Rel != tr.Rels[0] {
		t.Fatalf("truncate = %+v", tr)
	}
	names := []string{tr.Rels[0].Table(), tr.Rels[1].Table()}
	if !(names[0] == "public.item" && names[1] == "public.other" || names[0] == "public.other" && names[1] == "public.item") {
		t.Fatalf("truncated %v", names)
	}
}

func TestValueKinds(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, `CREATE TYPE mood AS ENUM ('sad', 'happy');
		CREATE DOMAIN qty AS int4 CHECK (VALUE >= 0); CREATE DOMAIN price AS numeric(12,2); CREATE DOMAIN bid AS price;
		CREATE DOMAIN feeling AS mood;
		CREATE TABLE v (id int PRIMARY KEY, b bool, i2 int2, i8 int8, n numeric, nn numeric, f float8, fnan float8,
			ts timestamptz, t timestamp, d date, j jsonb, ba bytea, arr int8[], tarr text[], m mood, iv interval, u uuid, nul text,
			q qty, p price, bd bid, fe feeling, arr2 int4[], arrlb int4[])`, "public.v")
	// A database that prints bytea in the escape format: walhook's session still reads hex.
	exec(t, dsn, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET bytea_output = escape', current_database()); END $$`)
	b := startStream(t, dsn, 0, nil)
	exec(t, dsn, `SET TimeZone = 'Europe/Berlin'; INSERT INTO v VALUES (1, true, -7, 9223372036854775807, 12345678901234567890.123456789, 'NaN',
		0.1, 'NaN', '2024-03-01 12:00:00.5+01', '2024-03-01 12:00:00', '2024-03-01', '{"a": [1, 2.50]}', '\x00ff',
		'{1,NULL,3}', '{"a,b","c"}', 'happy', '1 day 02:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL,
		10, 12.3, 7.5, 'sad', '{{1,2},{3,4}}', '[0:2]={7,8,9}')`)
	c := b.nextTx(t).Changes[0]
	want := map[string]any{
		"b": true, "i2": int64(-7), "i8": json.Number("9223372036854775807"),
		"n": json.Number("12345678901234567890.123456789"), "nn": NonFinite("NaN"), "f": 0.1, "fnan": NonFinite("NaN"),
		"ts": time.Date(2024, 3, 1, 11, 0, 0, 500000000, time.UTC), "t": time.Date(2024, 3, 1, 12, 0, 0, 0, NoZone),
		"d": "2024-03-01", "j": json.RawMessage(`{"a": [1, 2.50]}`), "ba": []byte{0, 255},
		"arr": []any{json.Number("1"), nil, json.Number("3")}, "tarr": []any{"a,b", "c"}, "m": "happy",
		"iv": "1 day 02:00:00", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "nul": Null,
		// Domains decode as their base type (through a domain of a domain);
		// a domain over an enum is text like the enum.
		"q": int64(10), "p": json.Number("12.30"), "bd": json.Number("7.50"), "fe": "sad",
		// Arrays the flat list cannot say keep the server's text.
		"arr2": "{{1,2},{3,4}}", "arrlb": "[0:2]={7,8,9}",
	}
	for name, w := range want {
		if got := col(t, c, c.New, name); !reflect.DeepEqual(got, w) {
			t.Errorf("%s = %#v (%T), want %#v", name, got, got, w)
		}
	}
	if _, err := json.Marshal(valuesOf(c.New)); err != nil {
		t.Errorf("values are not JSON-ready: %v", err)
	}
}

func valuesOf(vs []Value) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = v.V
	}
	return out
}

func TestMessagesAndHeartbeats(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	b := startStream(t, dsn, 0, func(o *Options) { o.HeartbeatInterval = 100 * time.Millisecond })
	// A heartbeat arrives as a position advance: a Final Tx without changes
	// whose EndLSN the consumer confirms.
	var hb *Tx
	for hb == nil {
		select {
		case tx := <-b.stream.Txs():
			if tx.Final && len(tx.Changes) == 0 && tx.Xid != 0 {
				hb = tx
			}
		case <-time.After(waitLimit):
			t.Fatal("no heartbeat transaction")
		}
	}
	b.stream.Confirm(hb.EndLSN)
	waitFor(t, "confirmed_flush_lsn to reach the heartbeat", func() bool {
		st, err := b.stream.Status(context.Background())
		return err == nil && st.ConfirmedFlushLSN >= hb.EndLSN
	})

	exec(t, dsn, `BEGIN; SELECT pg_logical_emit_message(true, 'app.audit', 'hello'); INSERT INTO item VALUES (1, 'x'); COMMIT`)
	tx := b.nextTx(t)
	if len(tx.Changes) != 2 || tx.Changes[0].Op != OpMessage || tx.Changes[0].Prefix != "app.audit" ||
		string(tx.Changes[0].Content) != "hello" || tx.Changes[1].Op != OpInsert || tx.Changes[1].Position != 1 {
		t.Fatalf("changes = %+v", tx.Changes)
	}
}

// A publication name as config and setup take it (any text: setup quotes
// it as an identifier) streams too: pgoutput reads publication_names as a
// list of identifiers, which folds an unquoted "Walhook" to walhook and
// refuses a blank or a comma in one.
func TestPublicationNameAsWritten(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	const pub = `Walhook Pub, "2"`
	exec(t, dsn, itemSchema)
	if _, err := Setup(context.Background(), dsn, SetupOptions{Slot: slotFor(dsn), Publication: pub, Tables: []string{"public.item"}}); err != nil {
		t.Fatalf("setup: %v", err)
	}
	b := startStream(t, dsn, 0, func(o *Options) { o.Publication = pub })
	exec(t, dsn, `INSERT INTO item VALUES (1, 'new', 'n1')`)
	if c := b.nextTx(t).Changes[0]; c.Op != OpInsert || c.Rel.Table() != "public.item" {
		t.Fatalf("change = %+v", c)
	}
}
