package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func TestSharedClusterIsLogical(t *testing.T) {
	t.Parallel()
	c := Shared(t)
	dsn := c.NewDatabase(t)
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var level string
	if err := conn.QueryRow(context.Background(), "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %q, want logical", level)
	}
}

func TestCrashAndRestartKeepCommittedData(t *testing.T) {
	t.Parallel()
	c := StartT(t, Options{Settings: map[string]string{"wal_level": "replica"}})
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE k(v int); INSERT INTO k VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	var level string
	if err := conn.QueryRow(ctx, "SELECT count(*), current_setting('wal_level') FROM k").Scan(&n, &level); err != nil {
		t.Fatal(err)
	}
	if n != 1 || level != "replica" {
		t.Fatalf("got %d rows, wal_level %s; want 1, replica", n, level)
	}
}

func TestDropDatabaseWithSlot(t *testing.T) {
	t.Parallel()
	c := Shared(t)
	ctx := context.Background()
	name, err := c.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, name, "SELECT pg_create_logical_replication_slot('s1', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
	if err := c.DropDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
}
