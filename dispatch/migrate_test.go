package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/pgtest"
)

func TestMigrateIdempotentAndCheckSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newStorePool(t)

	if err := CheckSchema(ctx, pool, "hooks"); !errors.Is(err, ErrSchemaMissing) {
		t.Fatalf("CheckSchema before setup = %v, want ErrSchemaMissing", err)
	}
	applied, err := Migrate(ctx, pool, "hooks")
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != LatestSchemaVersion() || applied[0] != "001_init.sql" {
		t.Fatalf("first Migrate applied %v, want every migration", applied)
	}
	again, err := Migrate(ctx, pool, "hooks")
	if err != nil || len(again) != 0 {
		t.Fatalf("second Migrate = %v, %v; want nothing applied", again, err)
	}
	if err := CheckSchema(ctx, pool, "hooks"); err != nil {
		t.Fatalf("CheckSchema after setup = %v", err)
	}

	// An older store: run setup to migrate.
	if _, err := pool.Exec(ctx, `DELETE FROM hooks.schema_version WHERE version = (SELECT max(version) FROM hooks.schema_version)`); err != nil {
		t.Fatal(err)
	}
	if err := CheckSchema(ctx, pool, "hooks"); !errors.Is(err, ErrSchemaOld) {
		t.Fatalf("CheckSchema on an old store = %v, want ErrSchemaOld", err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO hooks.schema_version (version) VALUES ($1)`, LatestSchemaVersion()); err != nil {
		t.Fatal(err)
	}

	// A store migrated by a newer walhook: refuse, in both calls.
	if _, err := pool.Exec(ctx, `INSERT INTO hooks.schema_version (version) VALUES (9999)`); err != nil {
		t.Fatal(err)
	}
	err = CheckSchema(ctx, pool, "hooks")
	var se *SchemaError
	if !errors.Is(err, ErrSchemaTooNew) || !errors.As(err, &se) || se.Have != 9999 {
		t.Fatalf("CheckSchema on a newer store = %v, want ErrSchemaTooNew at 9999", err)
	}
	if _, err := Migrate(ctx, pool, "hooks"); !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Migrate on a newer store = %v, want ErrSchemaTooNew", err)
	}
}

func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newStorePool(t)
	errs := make(chan error, 3)
	total := make(chan int, 3)
	for range 3 {
		go func() {
			a, err := Migrate(ctx, pool, "walhook")
			errs <- err
			total <- len(a)
		}()
	}
	sum := 0
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
		sum += <-total
	}
	if sum != LatestSchemaVersion() {
		t.Fatalf("concurrent Migrates applied %d migrations in all, want %d (each once)", sum, LatestSchemaVersion())
	}
}

func TestMigrateEmptySchema(t *testing.T) {
	if _, err := Migrate(context.Background(), nil, ""); err == nil {
		t.Fatal("Migrate with an empty schema name succeeded")
	}
}

// A schema_version table edited by hand (a row deleted, or one added for
// a migration that was never applied) no longer says which migrations the
// schema holds: the highest version alone would pass it as current, and
// setup would never apply the missing one. Both refuse it, naming the
// versions.
func TestSchemaVersionsWithAGapAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newStorePool(t)
	if _, err := Migrate(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM walhook.schema_version WHERE version = 3`); err != nil {
		t.Fatal(err)
	}
	err := CheckSchema(ctx, pool, "walhook")
	if !errors.Is(err, ErrSchemaVersions) || !strings.Contains(err.Error(), "without 3") {
		t.Fatalf("CheckSchema with version 3 missing = %v, want ErrSchemaVersions naming 3", err)
	}
	if _, err := Migrate(ctx, pool, "walhook"); !errors.Is(err, ErrSchemaVersions) {
		t.Fatalf("Migrate with version 3 missing = %v, want ErrSchemaVersions", err)
	}

	// A version no migration has, below the latest.
	if _, err := pool.Exec(ctx, `INSERT INTO walhook.schema_version (version) VALUES (3), (0)`); err != nil {
		t.Fatal(err)
	}
	if err := CheckSchema(ctx, pool, "walhook"); !errors.Is(err, ErrSchemaVersions) || !strings.Contains(err.Error(), "unknown 0") {
		t.Fatalf("CheckSchema with a version 0 row = %v, want ErrSchemaVersions naming 0", err)
	}
}

// A migration that must wait for a lock on a store table (a session idle
// in a transaction that read it, a pg_dump) would wait for as long as
// that session lasts, and every walhook statement on that table would
// queue behind it: the leader's appends stop. Migrate gives up after
// migrateLockWait instead, naming the session, and changes nothing; once
// the session is gone it applies.
func TestMigrateGivesUpWaitingForALockAndChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := newStorePool(t)
	if _, err := migrateTo(ctx, pool, "walhook", 5); err != nil {
		t.Fatal(err)
	}
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	var pid int
	if err := blocker.QueryRow(ctx, `SELECT pg_backend_pid() FROM walhook.cursor UNION ALL SELECT pg_backend_pid() LIMIT 1`).Scan(&pid); err != nil {
		t.Fatal(err)
	}

	mctx, cancel := context.WithTimeout(ctx, 2*migrateLockWait+20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = Migrate(mctx, pool, "walhook")
	if err == nil || mctx.Err() != nil || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", pid)) {
		t.Fatalf("Migrate behind a lock holder = %v after %s; want it to give up naming pid %d", err, time.Since(start), pid)
	}
	if v, err := schemaVersion(ctx, pool, "walhook", nil); err != nil || v != 5 {
		t.Fatalf("version after the refused Migrate = %d, %v; want 5", v, err)
	}
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, pool, "walhook"); err != nil {
		t.Fatalf("Migrate once the lock holder is gone: %v", err)
	}
}

// newStorePool opens a pool on a fresh database of the shared test cluster,
// closed when the test ends.
func newStorePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pgtest.Shared(t).NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
