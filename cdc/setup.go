package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// SetupOptions say what Setup creates.
type SetupOptions struct {
	Slot, Publication string
	// Tables to publish, "schema.table" (schema defaults to public). Only
	// the tables the rules use: never the store schema, whose writes would
	// otherwise come back as changes.
	Tables []string
	// Operations the rules map (insert, update, delete): a publication
	// whose publish option leaves one out gets no change of it from
	// PostgreSQL, so setup sets the option (or, on a publication another
	// role owns, says what its owner runs).
	Operations []string
	// ReplicaIdentityFull lists tables to ALTER … REPLICA IDENTITY FULL
	// (rules that need old values of non-key columns); for a partitioned
	// table, each of its leaf partitions too.
	ReplicaIdentityFull []string
	// StoreSchema is the store schema when the store is in the source
	// database: a publication another role owns that publishes its
	// tables (walhook's own writes) is refused, not taken with a warning
	// as one publishing other tables no rule maps is.
	StoreSchema string
	// Waiting, when set, is told what the slot's creation waits for when
	// it takes more than slotWaitNotice (and again every slotWaitRepeat):
	// PostgreSQL creates a logical slot only once every transaction that
	// was running when it began has ended, so a forgotten prepared
	// transaction or a session idle in a transaction holds setup for as
	// long as it lasts, which looked like a hang.
	Waiting func(line string)
}

// Setup creates the publication and then the slot, idempotently, and
// returns one human line per thing it did or found. Order matters: a slot
// created before its publication decodes changes from its consistent point
// on, and pgoutput then fails to find the publication for them.
func Setup(ctx context.Context, dsn string, o SetupOptions) ([]string, error) {
	if !slotNameRE.MatchString(o.Slot) {
		return nil, fmt.Errorf("setup: slot name %q: use 1-63 lower-case letters, digits and underscores", o.Slot)
	}
	if o.Publication == "" {
		return nil, errors.New("setup: publication name is empty")
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("setup: connect: %w", redact(err))
	}
	defer closeQuietly(conn)
	if err := RefuseStandby(ctx, conn); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}

	var did []string
	lines, err := setupPublication(ctx, conn, o.Publication, o.Tables, o.Operations, o.StoreSchema, false)
	did = append(did, lines...)
	if err != nil {
		return did, err
	}
	for _, t := range o.ReplicaIdentityFull {
		lines, err := replicaIdentityFull(ctx, conn, t)
		did = append(did, lines...)
		if err != nil {
			return did, err
		}
	}
	line, err := setupSlot(ctx, conn, dsn, o.Slot, o.Waiting)
	if line != "" {
		did = append(did, line)
	}
	return did, err
}

// tableIdent quotes "schema.table" (or "table", in public) for SQL and
// returns the canonical "schema.table" name.
func tableIdent(t string) (quoted, name string, err error) {
	schema, table, ok := strings.Cut(t, ".")
	if !ok {
		schema, table = "public", t
	}
	if schema == "" || table == "" || strings.Contains(table, ".") {
		return "", "", fmt.Errorf("table %q: want schema.table", t)
	}
	return pgx.Identifier{schema, table}.Sanitize(), schema + "." + table, nil
}

// viaRoot is the publication option walhook publishes with. With it a
// change of a partition arrives under its partitioned table's name (the
// one rules name) and is filtered by that table's publication entry;
// without it PostgreSQL lists and sends only the partitions, so rules on
// a partitioned table never match. For plain tables it changes nothing.
const viaRoot = "publish_via_partition_root = true"

// publishAll is the publish option walhook creates a publication with
// (PostgreSQL's default), and sets where one leaves out an operation the
// rules map.
const publishAll = "publish = 'insert, update, delete, truncate'"

// RefusePublication returns the error Setup would give for the
// publication, before anything changes: one FOR ALL TABLES, partitions
// named beside their table, or a publication this role may not change
// (the DBA's) that does not fit the rules. A publication that does not
// exist yet, or that this role may change, passes.
func RefusePublication(ctx context.Context, conn *pgx.Conn, o SetupOptions) error {
	_, err := setupPublication(ctx, conn, o.Publication, o.Tables, o.Operations, o.StoreSchema, true)
	return err
}

// setupPublication creates or fits the publication. With dry it changes
// nothing: it returns only what it would refuse (for a publication this
// role may not change it changes nothing anyway).
// AllTablesWhy is why setup and check refuse a FOR ALL TABLES
// publication.
const AllTablesWhy = "every table's changes are decoded and sent to walhook (its own store's too, when the store is in this database), where walhook publishes only the rule tables"

func setupPublication(ctx context.Context, conn *pgx.Conn, pub string, tables, ops []string, storeSchema string, dry bool) ([]string, error) {
	quoted := make([]string, 0, len(tables))
	want := make([]string, 0, len(tables))
	for _, t := range tables {
		q, name, err := tableIdent(t)
		if err != nil {
			return nil, fmt.Errorf("setup: %w", err)
		}
		if !slices.Contains(want, name) {
			quoted, want = append(quoted, q), append(want, name)
		}
	}
	slices.Sort(want)
	pubIdent := pgx.Identifier{pub}.Sanitize()
	if err := refusePartitionsOfRuleTables(ctx, conn, want); err != nil {
		return nil, err
	}

	var exists, allTables, root, ins, upd, del bool
	if err := conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(puballtables), false), coalesce(bool_or(pubviaroot), false),
		coalesce(bool_or(pubinsert), false), coalesce(bool_or(pubupdate), false), coalesce(bool_or(pubdelete), false)
		FROM pg_publication WHERE pubname = $1`, pub).Scan(&exists, &allTables, &root, &ins, &upd, &del); err != nil {
		return nil, fmt.Errorf("setup: look up publication: %w", err)
	}
	if !exists && dry {
		return nil, nil
	}
	if !exists {
		sql := "CREATE PUBLICATION " + pubIdent
		if len(quoted) > 0 {
			sql += " FOR TABLE " + strings.Join(quoted, ", ")
		}
		if _, err := conn.Exec(ctx, sql+" WITH ("+viaRoot+")"); err != nil {
			return nil, fmt.Errorf("setup: create publication %q: %w", pub, err)
		}
		return []string{fmt.Sprintf("created publication %s for %s", pub, listOrNone(want))}, nil
	}
	if allTables {
		return nil, fmt.Errorf("setup: publication %q is FOR ALL TABLES: %s; "+
			"drop it or choose another publication name", pub, AllTablesWhy)
	}
	// A publication the DBA created (docs/operations.md) belongs to the
	// DBA: say what to run instead of failing on "must be owner".
	owner, mine, err := publicationOwner(ctx, conn, pub)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	if mine && dry {
		return nil, nil
	}
	// One transaction: turning the partition option on and setting the
	// table list land together or not at all.
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return nil, fmt.Errorf("setup: alter publication %q: %w", pub, err)
	}
	committed := false
	defer func() {
		if !committed {
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	commit := func(lines []string) ([]string, error) {
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			return nil, fmt.Errorf("setup: alter publication %q: %w", pub, err)
		}
		committed = true
		return lines, nil
	}
	var did []string
	if !root {
		setRoot := "ALTER PUBLICATION " + pubIdent + " SET (" + viaRoot + ")"
		partitioned, err := partitionedTables(ctx, conn, want)
		if err != nil {
			return nil, err
		}
		switch {
		case mine:
			// Before the table list is read: the option changes what
			// pg_publication_tables lists (the roots, not the partitions).
			if _, err := conn.Exec(ctx, setRoot); err != nil {
				return nil, fmt.Errorf("setup: alter publication %q: %w", pub, err)
			}
			did = append(did, fmt.Sprintf("set %s on publication %s", viaRoot, pub))
		case len(partitioned) > 0:
			// Alone: the table list it shows (partitions, not roots)
			// means little until the option is on.
			return nil, fmt.Errorf("setup: publication %s publishes the partitions of %s under their own names "+
				"(publish_via_partition_root is off), so no change arrives under the name the rules map; it belongs to role %s, "+
				"which this role may not act for, so walhook cannot change it — fix: have %s (or a superuser) run %s; "+
				"and then run walhook setup again", pub, strings.Join(partitioned, ", "), owner, owner, setRoot)
		}
	}
	publishes := map[string]bool{"insert": ins, "update": upd, "delete": del}
	var unpublished []string
	for _, op := range ops {
		if !publishes[op] && !slices.Contains(unpublished, op) {
			unpublished = append(unpublished, op)
		}
	}
	if len(unpublished) > 0 {
		setPublish := "ALTER PUBLICATION " + pubIdent + " SET (" + publishAll + ")"
		if !mine {
			return nil, fmt.Errorf("setup: publication %s does not publish %s, which the rules map (its publish option), "+
				"so PostgreSQL sends no such change; it belongs to role %s, which this role may not act for, so walhook cannot change it "+
				"— fix: have %s (or a superuser) run %s; and then run walhook setup again",
				pub, strings.Join(unpublished, ", "), owner, owner, setPublish)
		}
		if _, err := conn.Exec(ctx, setPublish); err != nil {
			return nil, fmt.Errorf("setup: alter publication %q: %w", pub, err)
		}
		did = append(did, fmt.Sprintf("set %s on publication %s (it did not publish %s)", publishAll, pub, strings.Join(unpublished, ", ")))
	}
	have, filtered, err := publishedTables(ctx, conn, pub)
	if err != nil {
		return nil, err
	}
	if slices.Equal(have, want) && len(filtered) == 0 {
		return commit(append(did, fmt.Sprintf("publication %s already publishes %s", pub, listOrNone(want))))
	}
	var alter string
	switch {
	case len(quoted) > 0:
		// SET TABLE without WHERE or a column list also drops a row
		// filter or column list a listed table had.
		alter = "ALTER PUBLICATION " + pubIdent + " SET TABLE " + strings.Join(quoted, ", ")
	case len(have) > 0:
		// SET TABLE needs at least one table: drop the ones it has.
		drop := make([]string, len(have))
		for i, t := range have {
			drop[i], _, _ = tableIdent(t)
		}
		alter = "ALTER PUBLICATION " + pubIdent + " DROP TABLE " + strings.Join(drop, ", ")
	}
	extra := without(have, want)
	storeTables := slices.ContainsFunc(extra, func(t string) bool { return storeSchema != "" && strings.HasPrefix(t, storeSchema+".") })
	if !mine && len(without(want, have)) == 0 && len(filtered) == 0 && !storeTables {
		// Only tables no rule maps besides (a publication that serves
		// another consumer too): their changes are decoded and ignored,
		// as check says; nothing keeps walhook from running on it.
		return commit(append(did, fmt.Sprintf("warn: publication %s also publishes %s, which no rule maps (decoded and ignored); "+
			"it belongs to role %s, which this role may not act for, so it stays; to publish only the rule tables, have %s "+
			"(or a superuser) run %s;", pub, strings.Join(extra, ", "), owner, owner, alter)))
	}
	if !mine {
		var differs []string
		if missing := without(want, have); len(missing) > 0 {
			differs = append(differs, "does not publish "+strings.Join(missing, ", ")+", which the rules map")
		}
		if len(extra) > 0 {
			differs = append(differs, "publishes "+strings.Join(extra, ", ")+", which no rule maps")
		}
		if len(filtered) > 0 {
			differs = append(differs, "publishes "+strings.Join(filtered, ", ")+" with a row filter or a column list, "+
				"so updates across the filter arrive as inserts or deletes and rules miss columns")
		}
		return nil, fmt.Errorf("setup: publication %s %s; it belongs to role %s, which this role may not act for, "+
			"so walhook cannot change it — fix: have %s (or a superuser) run %s; and then run walhook setup again",
			pub, strings.Join(differs, " and "), owner, owner, alter)
	}
	if _, err = conn.Exec(ctx, alter); err != nil {
		return nil, fmt.Errorf("setup: alter publication %q: %w", pub, err)
	}
	if slices.Equal(have, want) {
		return commit(append(did, fmt.Sprintf("publication %s now publishes %s whole (it had a row filter or column list)",
			pub, strings.Join(filtered, ", "))))
	}
	line := fmt.Sprintf("changed publication %s from %s to %s", pub, listOrNone(have), listOrNone(want))
	if len(filtered) > 0 {
		line += fmt.Sprintf(", without the row filter or column list it had on %s", strings.Join(filtered, ", "))
	}
	return commit(append(did, line))
}

// publishedTables lists the tables pg_publication_tables shows for pub —
// the names their changes arrive under — and those of them published with
// a row filter or a column list (pg_publication_rel.prqual, prattrs). Both
// are read through to_jsonb, which is NULL where the server predates them
// (PostgreSQL 14).
func publishedTables(ctx context.Context, conn *pgx.Conn, pub string) (have, filtered []string, err error) {
	rows, err := conn.Query(ctx, `
		SELECT pt.schemaname || '.' || pt.tablename,
		       coalesce(to_jsonb(pr) ->> 'prqual', to_jsonb(pr) ->> 'prattrs') IS NOT NULL
		FROM pg_publication_tables pt
		JOIN pg_publication p ON p.pubname = pt.pubname
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid AND pr.prrelid = c.oid
		WHERE pt.pubname = $1 ORDER BY 1`, pub)
	if err != nil {
		return nil, nil, fmt.Errorf("setup: list publication tables: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t string
		var f bool
		if err := rows.Scan(&t, &f); err != nil {
			return nil, nil, fmt.Errorf("setup: list publication tables: %w", err)
		}
		have = append(have, t)
		if f {
			filtered = append(filtered, t)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("setup: list publication tables: %w", err)
	}
	return have, filtered, nil
}

// partitionedTables returns those of tables ("schema.table") that are
// partitioned (relkind 'p').
func partitionedTables(ctx context.Context, conn *pgx.Conn, tables []string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT t FROM unnest($1::text[]) AS t
		JOIN pg_namespace n ON n.nspname = split_part(t, '.', 1)
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = split_part(t, '.', 2)
		WHERE c.relkind = 'p' ORDER BY 1`, tables)
	if err != nil {
		return nil, fmt.Errorf("setup: look up partitioned tables: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("setup: look up partitioned tables: %w", err)
	}
	return out, nil
}

// refusePartitionsOfRuleTables refuses rule tables that are partitions of
// another rule table: published via the root, the partition's changes
// arrive under the root's name, so its rules would never fire, and the
// publication would never list it (setup would change it on every run).
func refusePartitionsOfRuleTables(ctx context.Context, conn *pgx.Conn, tables []string) error {
	rows, err := conn.Query(ctx, `
		SELECT t, an.nspname || '.' || ac.relname
		FROM unnest($1::text[]) AS t
		-- The catalogs, not to_regclass, which needs USAGE on the schema.
		CROSS JOIN LATERAL pg_partition_ancestors((SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		                                     WHERE n.nspname = split_part(t, '.', 1) AND c.relname = split_part(t, '.', 2))) AS a(relid)
		JOIN pg_class ac ON ac.oid = a.relid JOIN pg_namespace an ON an.oid = ac.relnamespace
		WHERE an.nspname || '.' || ac.relname <> t ORDER BY 1, 2`, tables)
	if err != nil {
		return fmt.Errorf("setup: look up partition ancestors: %w", err)
	}
	type pair struct{ Part, Root string }
	pairs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[pair])
	if err != nil {
		return fmt.Errorf("setup: look up partition ancestors: %w", err)
	}
	var bad []string
	for _, p := range pairs {
		if slices.Contains(tables, p.Root) {
			bad = append(bad, p.Part+" is a partition of "+p.Root)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("setup: %s, which the rules map too; walhook publishes partitioned tables via their root "+
		"(publish_via_partition_root), so a partition's changes arrive under its root's name and rules on the partition "+
		"never fire — fix: write those rules on the partitioned table (a when: on the partition key selects the partition's rows); "+
		"the publication is unchanged", strings.Join(bad, "; "))
}

// without returns the names in a that are not in b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// publicationOwner returns the publication's owner and whether this
// session's role may alter or drop it (a superuser, the owner, or a
// member that inherits the owner's privileges).
func publicationOwner(ctx context.Context, conn *pgx.Conn, pub string) (owner string, mine bool, err error) {
	err = conn.QueryRow(ctx, `SELECT pg_get_userbyid(p.pubowner),
		       pg_has_role(current_user, p.pubowner, 'USAGE') OR r.rolsuper
		FROM pg_publication p, pg_roles r
		WHERE p.pubname = $1 AND r.rolname = current_user`, pub).Scan(&owner, &mine)
	if err != nil {
		return "", false, fmt.Errorf("look up the owner of publication %q: %w", pub, err)
	}
	return owner, mine, nil
}

func listOrNone(tables []string) string {
	if len(tables) == 0 {
		return "no tables"
	}
	return strings.Join(tables, ", ")
}

// replicaIdentityFull sets REPLICA IDENTITY FULL on t and, when t is
// partitioned, on each of its leaf partitions (at any depth): PostgreSQL
// keeps the setting per table, ALTER TABLE on a partitioned table does
// not reach its partitions, and pgoutput sends a change's old row as the
// leaf partition the row is in has it. Foreign partitions are not
// replicated and are left alone.
func replicaIdentityFull(ctx context.Context, conn *pgx.Conn, t string) ([]string, error) {
	q, name, err := tableIdent(t)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	rows, err := conn.Query(ctx, `
		SELECT c.oid = $1::regclass, n.nspname || '.' || c.relname,
		       quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relreplident::text
		FROM (SELECT $1::regclass AS relid, 0 AS level
		      UNION ALL
		      SELECT relid, level FROM pg_partition_tree($1::regclass) WHERE isleaf AND relid <> $1::regclass) AS t
		JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p')
		ORDER BY t.level, 2`, q)
	if err != nil {
		return nil, fmt.Errorf("setup: look up replica identity of %s: %w", name, err)
	}
	type table struct {
		root                bool
		name, quoted, ident string // quoted from the catalog: a partition's name may hold a dot
	}
	var tables []table
	var tb table
	_, err = pgx.ForEachRow(rows, []any{&tb.root, &tb.name, &tb.quoted, &tb.ident}, func() error {
		tables = append(tables, tb)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("setup: look up replica identity of %s: %w", name, err)
	}
	var did []string
	set := 0
	for _, tb := range tables {
		if tb.ident == "f" {
			continue
		}
		if _, err := conn.Exec(ctx, "ALTER TABLE "+tb.quoted+" REPLICA IDENTITY FULL"); err != nil {
			return did, fmt.Errorf("setup: ALTER TABLE %s REPLICA IDENTITY FULL: %w", tb.name, err)
		}
		set++
		if tb.root {
			did = append(did, fmt.Sprintf("set REPLICA IDENTITY FULL on %s", tb.name))
		} else {
			did = append(did, fmt.Sprintf("set REPLICA IDENTITY FULL on %s, a partition of %s", tb.name, name))
		}
	}
	if set == 0 {
		if len(tables) > 1 {
			return []string{fmt.Sprintf("table %s and its %d partitions already have REPLICA IDENTITY FULL", name, len(tables)-1)}, nil
		}
		return []string{fmt.Sprintf("table %s already has REPLICA IDENTITY FULL", name)}, nil
	}
	return did, nil
}

func setupSlot(ctx context.Context, conn *pgx.Conn, dsn, slot string, waiting func(string)) (string, error) {
	exists, err := ExistingSlot(ctx, conn, slot)
	if err != nil {
		return "", fmt.Errorf("setup: %w", err)
	}
	if !exists {
		stop, reported := make(chan struct{}), make(chan struct{})
		if waiting != nil {
			pid := conn.PgConn().PID()
			go func() {
				defer close(reported)
				reportSlotWait(ctx, dsn, pid, slot, waiting, stop)
			}()
		} else {
			close(reported)
		}
		// Never temporary: a temporary slot vanishes with its session and
		// with it every change not yet confirmed.
		var lsn string
		err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false)`, slot).Scan(&lsn)
		close(stop)
		<-reported
		if err != nil {
			return "", fmt.Errorf("setup: create replication slot %q: %w", slot, err)
		}
		return fmt.Sprintf("created replication slot %s (pgoutput) at %s", slot, lsn), nil
	}
	return fmt.Sprintf("replication slot %s already exists (pgoutput); kept", slot), nil
}

// ExistingSlot reports whether slot exists, and fails when it does but is
// not one walhook can use: physical, of another database, of another
// plugin, temporary or invalidated. Setup checks it before it changes
// anything.
func ExistingSlot(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	var plugin, db, walStatus *string
	var temporary bool
	err := conn.QueryRow(ctx, `SELECT plugin, database, temporary, wal_status FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&plugin, &db, &temporary, &walStatus)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("look up replication slot %q: %w", slot, err)
	}
	var cur string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&cur); err != nil {
		return false, err
	}
	switch {
	case plugin == nil || db == nil:
		return true, fmt.Errorf("slot %q exists but is a physical slot; choose another slot name", slot)
	case *db != cur:
		return true, fmt.Errorf("slot %q exists for database %q, not %q; choose another slot name", slot, *db, cur)
	case *plugin != "pgoutput":
		return true, fmt.Errorf("slot %q exists with plugin %q, walhook needs pgoutput; drop it or choose another slot name", slot, *plugin)
	case temporary:
		return true, fmt.Errorf("slot %q is temporary; walhook needs a permanent slot", slot)
	case walStatus != nil && *walStatus == "lost":
		// Kept, it would read as ready while run refuses it.
		return true, fmt.Errorf("%w: slot %q is invalidated (wal_status lost: max_slot_wal_keep_size let PostgreSQL remove WAL it "+
			"had not confirmed), so the changes in that WAL are gone; fix: walhook teardown && walhook setup --accept-gap "+
			"(docs/operations.md, Recovering from a gap)", ErrSlotLost, slot)
	}
	return true, nil
}

// Teardown drops the slot (so PostgreSQL stops retaining WAL for it) and
// then the publication. While another process holds the slot it refuses
// with ErrSlotActive, unless force: then it terminates that backend first.
func Teardown(ctx context.Context, dsn, slot, publication string, force bool) ([]string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("teardown: connect: %w", redact(err))
	}
	defer closeQuietly(conn)
	// On a standby the slot is not listed and nothing can be dropped:
	// "nothing to drop" would leave the primary's slot retaining WAL.
	if err := RefuseStandby(ctx, conn); err != nil {
		return nil, fmt.Errorf("teardown: %w", err)
	}
	var did []string
	line, err := dropSlot(ctx, conn, slot, force)
	if err != nil {
		return did, err
	}
	did = append(did, line)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, publication).Scan(&exists); err != nil {
		return did, fmt.Errorf("teardown: look up publication: %w", err)
	}
	if !exists {
		return append(did, fmt.Sprintf("publication %s does not exist; nothing to drop", publication)), nil
	}
	drop := "DROP PUBLICATION " + pgx.Identifier{publication}.Sanitize()
	owner, mine, err := publicationOwner(ctx, conn, publication)
	if err != nil {
		return did, fmt.Errorf("teardown: %w", err)
	}
	if !mine {
		// The DBA's publication (docs/operations.md): it retains no WAL,
		// so the teardown goes on, and says what is left to whom.
		return append(did, fmt.Sprintf("warn: publication %s belongs to role %s, which this role may not act for, so it stays "+
			"(a publication retains no WAL); to remove it, have %s (or a superuser) run %s;", publication, owner, owner, drop)), nil
	}
	if _, err := conn.Exec(ctx, drop); err != nil {
		return did, fmt.Errorf("teardown: drop publication %q: %w", publication, err)
	}
	return append(did, fmt.Sprintf("dropped publication %s", publication)), nil
}

func dropSlot(ctx context.Context, conn *pgx.Conn, slot string, force bool) (string, error) {
	terminated := false
	for i := 0; ; i++ {
		var active bool
		var pid *int32
		var db *string
		var sameDB bool
		err := conn.QueryRow(ctx, `SELECT active, active_pid, database, coalesce(database = current_database(), false)
			FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active, &pid, &db, &sameDB)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Sprintf("replication slot %s does not exist; nothing to drop", slot), nil
		}
		if err != nil {
			return "", fmt.Errorf("teardown: look up replication slot %q: %w", slot, err)
		}
		// Not walhook's (setup makes a logical slot of this database, and
		// refuses a name another slot has): a standby's physical slot, or
		// another database's logical slot (another walhook's). Dropping it
		// would break what reads it.
		if db == nil {
			return fmt.Sprintf("warn: replication slot %s is a physical slot (a standby's), not walhook's; kept", slot), nil
		}
		if !sameDB {
			return fmt.Sprintf("warn: replication slot %s is a logical slot of database %q, not of this one, so not this "+
				"config's; kept (tear it down with the config of that database)", slot, *db), nil
		}
		if !active {
			break
		}
		p := int32(0)
		if pid != nil {
			p = *pid
		}
		if !force {
			return "", fmt.Errorf("teardown: %w: slot %q is held by the server process with PID %d (the walsender of a running walhook?); stop that walhook, or use --force to terminate the walsender",
				ErrSlotActive, slot, p)
		}
		if p != 0 { // again on every round: a holder may reconnect in between
			if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, p); err != nil {
				return "", fmt.Errorf("teardown: terminate PID %d holding slot %q: %w", p, slot, err)
			}
			terminated = true
		}
		if i > 100 {
			return "", fmt.Errorf("teardown: %w: slot %q still held by PID %d after terminating its backend", ErrSlotActive, slot, p)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
		return "", fmt.Errorf("teardown: drop replication slot %q: %w", slot, err)
	}
	if terminated {
		return fmt.Sprintf("dropped replication slot %s (after terminating its holder)", slot), nil
	}
	return fmt.Sprintf("dropped replication slot %s", slot), nil
}

// slotWaitNotice is how long the slot's creation may take before setup
// says what it waits for; slotWaitRepeat, how often it says so again.
var (
	slotWaitNotice = 5 * time.Second
	slotWaitRepeat = time.Minute
)

// reportSlotWait tells waiting, until stop closes, which transactions the
// backend pid creating slot waits for: the prepared transactions and the
// sessions' transactions (with a transaction id) that began before its
// own, each with its fix. It reads them on a connection of its own; one
// it cannot make or a query that fails is said as such.
func reportSlotWait(ctx context.Context, dsn string, pid uint32, slot string, waiting func(string), stop <-chan struct{}) {
	wait := slotWaitNotice
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = slotWaitRepeat
		open, err := slotWaitBlockers(ctx, dsn, pid)
		select {
		case <-stop: // created meanwhile
			return
		default:
		}
		head := fmt.Sprintf("waiting to create replication slot %s: PostgreSQL creates a logical slot only once every "+
			"transaction that was running when it began has ended", slot)
		switch {
		case err != nil:
			waiting(fmt.Sprintf("%s (could not list them: %v)", head, err))
		case len(open) == 0:
			waiting(head + "; none that this role can see is still open (pg_prepared_xacts, pg_stat_activity)")
		default:
			waiting(head + "; still open:\n  " + strings.Join(open, "\n  "))
		}
	}
}

// slotWaitBlockers lists, with their fixes, the prepared transactions and
// the other sessions' transactions with a transaction id that began
// before backend pid's transaction.
func slotWaitBlockers(ctx context.Context, dsn string, pid uint32) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, redact(err)
	}
	defer closeQuietly(conn)
	var since time.Time
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(xact_start), now()) FROM pg_stat_activity WHERE pid = $1`, int64(pid)).Scan(&since); err != nil {
		return nil, err
	}
	return OpenTransactions(ctx, conn, pid, since)
}

// OpenTransactions lists, each with its fix, the prepared transactions
// (of every database) prepared at or before before, and the transactions
// with a transaction id that sessions other than backend exclude began at
// or before before (those of other roles only with pg_read_all_stats).
// Such a transaction keeps every logical slot's restart_lsn, and so the
// WAL PostgreSQL retains for it, at or before its start, whatever the
// slot's consumer confirms, and a new slot waits for it to end.
func OpenTransactions(ctx context.Context, conn *pgx.Conn, exclude uint32, before time.Time) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT format('prepared transaction %L (database %s, owner %s, prepared %s UTC) — fix: in database %s, COMMIT PREPARED %L; or ROLLBACK PREPARED %L;',
		              p.gid, p.database, p.owner, to_char(p.prepared AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), p.database, p.gid, p.gid)
		FROM pg_prepared_xacts p WHERE p.prepared <= $2
		UNION ALL
		SELECT format('session %s (database %s, user %s, %s, its transaction open since %s UTC) — fix: end that transaction, or SELECT pg_terminate_backend(%s);',
		              a.pid, a.datname, a.usename, coalesce(a.state, 'state unknown'), to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), a.pid)
		FROM pg_stat_activity a
		WHERE a.pid <> $1 AND a.backend_xid IS NOT NULL AND a.xact_start <= $2`, int64(exclude), before)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
