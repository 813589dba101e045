package dispatch

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Schema state errors returned by CheckSchema (and Migrate for a newer store).
var (
	// ErrSchemaMissing: the store schema has not been created; run `walhook setup`.
	ErrSchemaMissing = errors.New("store schema missing: run walhook setup")
	// ErrSchemaTooNew: the store was migrated by a newer walhook; this binary
	// refuses to run against it rather than misread it.
	ErrSchemaTooNew = errors.New("store schema is newer than this walhook: upgrade walhook")
	// ErrSchemaOld: the store needs migrations this binary has; run `walhook setup`.
	ErrSchemaOld = errors.New("store schema is older than this walhook: run walhook setup to migrate")
	// ErrSchemaVersions: the schema_version table lacks a migration below
	// its highest version, or lists one no walhook has (it was edited by
	// hand), so it no longer tells which migrations the schema holds.
	ErrSchemaVersions = errors.New("edited by hand, so walhook cannot tell which migrations the schema holds")
	// ErrSchemaNotAStore: Migrate found the schema holding tables (or
	// views, sequences) but no walhook schema version: another
	// application's schema, or a store made in part by hand. It creates
	// nothing among them.
	ErrSchemaNotAStore = errors.New("not a walhook store")
)

// SchemaError carries the versions behind a schema state error.
type SchemaError struct {
	Schema     string
	Have, Want int
	Err        error
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("schema %q at version %d, walhook needs %d: %v", e.Schema, e.Have, e.Want, e.Err)
}

func (e *SchemaError) Unwrap() error { return e.Err }

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	ents, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range ents {
		n := e.Name()
		v, err := strconv.Atoi(strings.SplitN(n, "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a version number", n)
		}
		b, err := migrationFiles.ReadFile("migrations/" + n)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: n, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// LatestSchemaVersion is the store version this binary migrates to.
func LatestSchemaVersion() int {
	ms, _ := migrations()
	if len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// migrateLockKey is the advisory lock key that serialises concurrent
// `walhook setup` runs on one store (pg_advisory_xact_lock releases it at
// commit or rollback, so a crashed setup leaves nothing held).
const migrateLockKey = "walhook.migrate."

// migrateLockWait bounds how long a migration statement waits for a lock
// on a store table. A statement waiting for a lock makes every later
// statement that needs a conflicting lock on that table wait behind it, so
// a migration queued behind a long holder (a session idle in a
// transaction, a pg_dump) would stop a running walhook's appends for as
// long as the holder lasts. walhook's own transactions hold their locks
// for milliseconds. Building an index on a large table, once the lock is
// taken, is not bounded by it.
const migrateLockWait = 10 * time.Second

// Migrate creates the schema when missing and applies the migrations the
// store has not seen, in one transaction under an advisory lock, so two
// concurrent setups neither race nor half-apply. It returns the names of
// the migrations it applied (none when the store is current) and
// ErrSchemaTooNew when a newer walhook migrated the store. A statement
// that waits longer than migrateLockWait for a lock fails it, and the
// transaction with it.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string) ([]string, error) {
	return migrateTo(ctx, pool, schema, LatestSchemaVersion())
}

// migrateTo is Migrate stopping after version upTo: tests build a store
// as an older walhook left it.
func migrateTo(ctx context.Context, pool *pgxpool.Pool, schema string, upTo int) ([]string, error) {
	if schema == "" {
		return nil, errors.New("migrate: empty schema name")
	}
	ms, err := migrations()
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	var applied []string
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, migrateLockKey+schema); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		// Set after the advisory lock: a second setup waits for the first
		// one however long its migrations take.
		if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = %d`, migrateLockWait.Milliseconds())); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		// CREATE SCHEMA IF NOT EXISTS checks CREATE on the database before
		// it looks for the schema, so it fails for a role given a schema a
		// DBA created for it (docs/operations.md): create only when missing.
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists); err != nil {
			return fmt.Errorf("look up schema: %w", err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, `CREATE SCHEMA `+quoteIdent(schema)); err != nil {
				return fmt.Errorf("create schema: %w", err)
			}
		}
		have, err := schemaVersion(ctx, tx, schema, ms)
		if err != nil {
			return err
		}
		if have == 0 && exists {
			if err := refuseForeignSchema(ctx, tx, schema); err != nil {
				return err
			}
		}
		if latest := ms[len(ms)-1].version; have > latest {
			return &SchemaError{Schema: schema, Have: have, Want: latest, Err: ErrSchemaTooNew}
		}
		q := quoteIdent(schema)
		for _, m := range ms {
			if m.version <= have || m.version > upTo {
				continue
			}
			if _, err := tx.Exec(ctx, strings.ReplaceAll(m.sql, "{{schema}}", q)); err != nil {
				return fmt.Errorf("apply %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+q+`.schema_version (version) VALUES ($1)`, m.version); err != nil {
				return fmt.Errorf("record %s: %w", m.name, err)
			}
			applied = append(applied, m.name)
		}
		return nil
	})
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "55P03" { // lock_not_available
		err = fmt.Errorf("%w; waited %s for a lock on a store table held by %s (pg_stat_activity shows what: a long "+
			"transaction, a session idle in a transaction, a pg_dump); nothing was changed, run setup again once it has ended",
			err, migrateLockWait, lockHolders(ctx, pool, schema))
	}
	if err != nil {
		return nil, fmt.Errorf("migrate schema %q: %w", schema, err)
	}
	return applied, nil
}

// refuseForeignSchema fails with ErrSchemaNotAStore when schema, which
// has no walhook schema version, holds relations (other than an
// extension's): walhook's tables
// (events, deliveries, cursor, endpoints…) would go in among an
// application's, or 001_init.sql would fail on the first name taken
// with only PostgreSQL's "relation … already exists".
func refuseForeignSchema(ctx context.Context, q querier, schema string) error {
	names, err := ForeignRelations(ctx, q, schema)
	if err != nil || len(names) == 0 {
		return err
	}
	return fmt.Errorf("schema %q holds %s but no walhook schema_version: %w (another application's schema, or a "+
		"store made in part by hand); nothing was created in it — fix: %s", schema, names, ErrSchemaNotAStore, NotAStoreFix)
}

// NotAStoreFix is what to do about a store.schema that holds relations
// but no walhook store (ForeignRelations).
const NotAStoreFix = "set store.schema to a schema of walhook's own (setup creates it), or, for a store made in part, drop what it holds first"

// ForeignRelations names the relations schema holds other than an
// extension's (the first five, then how many more), "" when none: for a
// schema without a walhook schema version, what keeps Migrate from
// making a store of it.
func ForeignRelations(ctx context.Context, q querier, schema string) (string, error) {
	var names []string
	if err := q.QueryRow(ctx, `SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
		  -- An extension's (pg_stat_statements' views in public) is no
		  -- application's, and takes none of walhook's names.
		  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`,
		schema).Scan(&names); err != nil {
		return "", fmt.Errorf("look up the schema's tables: %w", err)
	}
	if len(names) == 0 {
		return "", nil
	}
	more := ""
	if len(names) > 5 {
		more = fmt.Sprintf(" and %d more", len(names)-5)
		names = names[:5]
	}
	return strings.Join(names, ", ") + more, nil
}

// lockHolders names the other sessions holding locks on the schema's
// tables, for the error of a migration that waited too long for one.
func lockHolders(ctx context.Context, pool *pgxpool.Pool, schema string) string {
	var pids []int32
	err := pool.QueryRow(ctx, `SELECT coalesce(array_agg(DISTINCT l.pid ORDER BY l.pid), '{}') FROM pg_locks l
		JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND l.granted AND l.pid <> pg_backend_pid()`, schema).Scan(&pids)
	if err != nil || len(pids) == 0 {
		return "another session"
	}
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = "pid " + strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// schemaVersion returns the highest applied version, 0 when the version
// table does not exist yet (to_regclass returns NULL instead of failing).
// Up to a version this binary knows, the table must list exactly the
// migrations ms has up to it: a missing row would leave that migration
// unapplied for good (setup applies only those above the highest), and a
// row no migration has says nothing about the schema. Above the latest
// version (a newer walhook's store) the rows are not judged.
func schemaVersion(ctx context.Context, q querier, schema string, ms []migration) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, quoteIdent(schema)+".schema_version").Scan(&exists); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var rows []int
	if err := q.QueryRow(ctx, `SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM `+quoteIdent(schema)+`.schema_version`).Scan(&rows); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	have := rows[len(rows)-1]
	if len(ms) == 0 || have > ms[len(ms)-1].version {
		return have, nil
	}
	listed := make(map[int]bool, len(rows))
	for _, v := range rows {
		listed[v] = true
	}
	known := make(map[int]bool, len(ms))
	var missing, unknown []string
	for _, m := range ms {
		known[m.version] = true
		if m.version <= have && !listed[m.version] {
			missing = append(missing, strconv.Itoa(m.version))
		}
	}
	for _, v := range rows {
		if !known[v] {
			unknown = append(unknown, strconv.Itoa(v))
		}
	}
	if len(missing) == 0 && len(unknown) == 0 {
		return have, nil
	}
	var what []string
	if len(missing) > 0 {
		what = append(what, "without "+strings.Join(missing, ", "))
	}
	if len(unknown) > 0 {
		what = append(what, "with unknown "+strings.Join(unknown, ", "))
	}
	return 0, fmt.Errorf("schema %q: schema_version goes up to %d %s: %w", schema, have, strings.Join(what, " and "), ErrSchemaVersions)
}

// CheckSchema tells `walhook run` whether it may use the store: nil when
// the schema is at this binary's version, otherwise a *SchemaError wrapping
// ErrSchemaMissing, ErrSchemaTooNew or ErrSchemaOld, or an error wrapping
// ErrSchemaVersions.
func CheckSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	have, err := schemaVersion(ctx, pool, schema, ms)
	if err != nil {
		return err
	}
	want := LatestSchemaVersion()
	switch {
	case have == 0:
		return &SchemaError{Schema: schema, Have: have, Want: want, Err: ErrSchemaMissing}
	case have > want:
		return &SchemaError{Schema: schema, Have: have, Want: want, Err: ErrSchemaTooNew}
	case have < want:
		return &SchemaError{Schema: schema, Have: have, Want: want, Err: ErrSchemaOld}
	}
	return nil
}

// CatchUpSequences moves the store's sequences (the delivery log's ids)
// past the ids its tables hold, and returns what it moved: a store
// copied by logical replication (a blue/green switchover with the store
// inside the source database, a store moved that way) has its rows but
// its sequences where the copy's schema left them, as PostgreSQL does not
// replicate sequences, and every attempt the delivery log then records
// fails on a duplicate id. A sequence at or past its table's ids is not
// touched, so a running walhook's is never moved back.
func CatchUpSequences(ctx context.Context, pool *pgxpool.Pool, schema string) ([]string, error) {
	table := quoteIdent(schema) + ".attempts"
	var seq *string
	if err := pool.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, 'id')`, table).Scan(&seq); err != nil {
		return nil, fmt.Errorf("find the sequence of %s: %w", table, err)
	}
	if seq == nil {
		return nil, nil
	}
	var moved *int64
	// pg_sequence_last_value takes USAGE, the store role's grant (NULL
	// before the first nextval); setval, which takes UPDATE, runs only on
	// a sequence found behind.
	err := pool.QueryRow(ctx, `SELECT setval($1::regclass, m) FROM (SELECT max(id) AS m FROM `+table+`) t
		WHERE m > COALESCE(pg_sequence_last_value($1::regclass), 0)`, *seq).Scan(&moved)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("catch up the sequence %s: %w", *seq, err)
	}
	return []string{fmt.Sprintf("%s to %d, the last id of %s", *seq, *moved, table)}, nil
}
