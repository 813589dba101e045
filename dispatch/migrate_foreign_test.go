package dispatch

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// store.schema naming a schema that is not walhook's — the application's
// (public), or one holding part of a store made by hand (001_init.sql run
// in part) — has tables but no schema_version. setup took it for an empty
// store: it created walhook's tables among the application's (events,
// deliveries, cursor, endpoints…) without a word, or, where a name was
// taken, failed with the bare `relation "events" already exists` of
// 001_init.sql. It must refuse such a schema, naming it and what is in
// it, and change nothing.
func TestMigrateRefusesASchemaThatIsNotAStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newStorePool(t)
	if _, err := pool.Exec(ctx, `CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY); CREATE SEQUENCE app.order_no`); err != nil {
		t.Fatal(err)
	}
	_, err := Migrate(ctx, pool, "app")
	if !errors.Is(err, ErrSchemaNotAStore) {
		t.Fatalf("Migrate into an application schema = %v, want ErrSchemaNotAStore", err)
	}
	for _, want := range []string{`"app"`, "orders", "store.schema"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 { // orders, its primary key index, the sequence
		t.Errorf("the schema holds %d relations after the refused migration, want the 3 it had", n)
	}

	// A store made in part by hand.
	if _, err := pool.Exec(ctx, `CREATE SCHEMA half; CREATE TABLE half.cursor (slot text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, pool, "half"); !errors.Is(err, ErrSchemaNotAStore) || !strings.Contains(err.Error(), "cursor") {
		t.Fatalf("Migrate into a store made in part = %v, want ErrSchemaNotAStore naming cursor", err)
	}

	// An empty schema (a DBA's CREATE SCHEMA … AUTHORIZATION) is migrated.
	if _, err := pool.Exec(ctx, `CREATE SCHEMA empty`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, pool, "empty"); err != nil {
		t.Fatalf("Migrate into an empty schema: %v", err)
	}
}

// A schema whose only relations belong to an extension (pg_stat_statements'
// views in the public schema of a store database, as managed PostgreSQL
// services install them) is not another application's: walhook's tables
// go beside them. It was refused as "not a walhook store".
func TestMigrateTakesASchemaWithOnlyExtensionRelations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newStorePool(t)
	if _, err := pool.Exec(ctx, `CREATE SCHEMA ext; CREATE EXTENSION pg_stat_statements SCHEMA ext`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, pool, "ext"); err != nil {
		t.Fatalf("Migrate into a schema holding only an extension's views: %v", err)
	}
	// An application's table beside them is still refused.
	if _, err := pool.Exec(ctx, `CREATE SCHEMA ext2; ALTER EXTENSION pg_stat_statements SET SCHEMA ext2; CREATE TABLE ext2.orders (id int)`); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, pool, "ext2"); !errors.Is(err, ErrSchemaNotAStore) || strings.Contains(err.Error(), "pg_stat_statements") {
		t.Fatalf("Migrate into a schema with an application table = %v, want ErrSchemaNotAStore naming only orders", err)
	}
}
