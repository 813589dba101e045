package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgtest"
)

var asciiSeq atomic.Int64

// sqlASCIIRun prepares walhook on a SQL_ASCII source database (legacy
// databases that hold Latin-1 bytes in it are common) made by schema,
// with the rules of events, and with the store in a UTF8 database of its
// own when separateStore.
func sqlASCIIRun(t *testing.T, schema, events string, separateStore bool) (*runDB, *runReceiver, string) {
	t.Helper()
	ctx := context.Background()
	c := pgtest.Shared(t)
	name := fmt.Sprintf("ascii_%d_%d", os.Getpid(), asciiSeq.Add(1))
	if err := c.Exec(ctx, "postgres", `CREATE DATABASE `+name+` ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DropDatabase(context.Background(), name) })
	dsn := c.DSN(name)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	db := &runDB{dsn: dsn, pool: pool, schema: "walhook", slot: "wh_" + name}
	rc := newRunReceiver(t, runSecret, nil)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	if separateStore {
		storeDSN := c.NewDatabase(t) // UTF8, as pgtest creates them
		s["store.dsn"] = storeDSN
		if _, err := dispatch.Migrate(ctx, testPool(t, storeDSN), "walhook"); err != nil {
			t.Fatal(err)
		}
	}
	file, cfg := runConfig(t, []byte("source:\n  dsn: set-by-test\n"+events), s)
	db.setup(t, cfg)
	return db, rc, file
}

// notesRun is sqlASCIIRun with a table of a text and a json column.
func notesRun(t *testing.T, separateStore bool) (*runDB, *runReceiver, string) {
	t.Helper()
	return sqlASCIIRun(t, `CREATE TABLE notes (id int PRIMARY KEY, body text, doc json)`, `events:
  - event: note.created
    table: public.notes
    operations: [insert]
`, separateStore)
}

const latin1Insert = `INSERT INTO notes VALUES (1, convert_from('\x63616ee9'::bytea, 'SQL_ASCII'),
	('{"a": "' || convert_from('\x63616ee9'::bytea, 'SQL_ASCII') || '"}')::json)`

// A SQL_ASCII source holding bytes that are not UTF-8: a text value's
// become U+FFFD, and so do a json value's (which used to be appended as
// PostgreSQL sent them), so the webhook body is UTF-8, i.e. JSON (RFC 8259
// §8.1), and a store in a UTF8 database accepts the event (it failed with
// "invalid byte sequence for encoding UTF8", on every restart).
func TestJSONValueWithNonUTF8BytesKeepsTheBodyJSON(t *testing.T) {
	t.Parallel()
	t.Run("store in the source database", func(t *testing.T) {
		t.Parallel()
		db, rc, file := notesRun(t, false)
		p := startRunProc(t, "--config", file)
		db.exec(t, latin1Insert)
		runWaitFor(t, 30*time.Second, "the delivery", func() bool { return rc.Unique() == 1 }, p.diag)
		body := rc.deliveries()[0].Body
		if !strings.Contains(string(body), `"body":"can\ufffd"`) {
			t.Errorf("text column not rendered with U+FFFD: %q", body)
		}
		if !utf8.Valid(body) {
			t.Errorf("the webhook body is not UTF-8 (not JSON): %q", body)
		}
	})
	t.Run("store in a UTF8 database", func(t *testing.T) {
		t.Parallel()
		db, rc, file := notesRun(t, true)
		p := startRunProc(t, "--config", file)
		db.exec(t, latin1Insert)
		deadline := time.Now().Add(60 * time.Second)
		for rc.Unique() == 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if rc.Unique() == 0 {
			t.Errorf("no delivery in 60s; walhook log:\n%s", runTail(p.stderr.String(), 1500))
		}
	})
}
