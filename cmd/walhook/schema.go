package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/mapper"
)

// readSourceSchema reads, from pg_catalog, what mapper.CheckSchema needs to
// know about each of tables ("schema.table", or "table" in public): the
// columns and their types (a domain's the type it ends in, for `when:`'s
// type check), the replica identity (pg_class.relreplident) and the
// columns that identity sends as the old key. Tables that do not exist (or are not plain
// or partitioned tables) are absent from the result, keyed "schema.table".
//
// The catalogs are readable without any privilege on the tables, so a
// missing SELECT grant does not hide a table here; check reports it apart.
// Keys mirror what pgoutput marks as key columns: the primary key under
// DEFAULT, the chosen index under USING INDEX, every column under FULL and
// none under NOTHING.
//
// A partitioned table's identity is that of its whole tree (see
// partitionIdentity), and the second result holds, per partitioned rule
// table, its tree's facts.
func readSourceSchema(ctx context.Context, conn *pgx.Conn, tables []string) (map[string]mapper.TableSchema, map[string]*partitionIdentity, error) {
	schemas := make([]string, len(tables))
	names := make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = splitQualified(t)
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, c.relname, c.relreplident::text, c.oid, c.relkind = 'p',
		       array(SELECT a.attname::text FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		             ORDER BY a.attnum),
		       array(SELECT a.attname::text FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''
		             ORDER BY a.attnum),
		       array(SELECT coalesce((WITH RECURSIVE d(oid, typtype, base) AS (
		                                  SELECT t.oid, t.typtype, t.typbasetype FROM pg_type t WHERE t.oid = a.atttypid
		                                  UNION ALL
		                                  SELECT t.oid, t.typtype, t.typbasetype FROM d JOIN pg_type t ON t.oid = d.base WHERE d.typtype = 'd')
		                              SELECT oid FROM d WHERE typtype <> 'd'), 0)::oid
		             FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		             ORDER BY a.attnum),
		       array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		             ORDER BY a.attnum),
		       array(SELECT DISTINCT a.attname::text FROM pg_partition_tree(c.oid) AS pt
		             JOIN pg_partitioned_table p ON p.partrelid = pt.relid
		             CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
		             JOIN pg_attribute a ON a.attrelid = pt.relid AND a.attnum = k.attnum
		             ORDER BY 1),
		       array(SELECT a.attname::text FROM pg_index i
		             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
		             WHERE i.indrelid = c.oid
		               AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
		                                       WHEN 'i' THEN i.indisreplident
		                                       ELSE false END
		             ORDER BY a.attnum)
		FROM unnest($1::text[], $2::text[]) AS want(schema, name)
		JOIN pg_namespace n ON n.nspname = want.schema
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = want.name
		WHERE c.relkind IN ('r', 'p')`, schemas, names)
	if err != nil {
		return nil, nil, fmt.Errorf("read source schema: %w", err)
	}
	defer rows.Close()
	out := make(map[string]mapper.TableSchema, len(tables))
	parts := map[string]*partitionIdentity{}
	for rows.Next() {
		var schema, name, ident string
		var partitioned bool
		var ts mapper.TableSchema
		if err := rows.Scan(&schema, &name, &ident, &ts.OID, &partitioned, &ts.Columns, &ts.Generated, &ts.Types, &ts.TypeNames, &ts.PartitionKeys, &ts.Keys); err != nil {
			return nil, nil, fmt.Errorf("read source schema: %w", err)
		}
		if ident != "" {
			ts.ReplicaIdentity = ident[0]
		}
		if ts.ReplicaIdentity == 'f' {
			ts.Keys = ts.Columns
		}
		out[schema+"."+name] = ts
		if partitioned {
			parts[schema+"."+name] = &partitionIdentity{own: ts.ReplicaIdentity}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read source schema: %w", err)
	}
	rows.Close()
	if err := readEnumLabels(ctx, conn, out); err != nil {
		return nil, nil, err
	}
	if err := readLeafIdentities(ctx, conn, out, parts); err != nil {
		return nil, nil, err
	}
	return out, parts, nil
}

// readEnumLabels fills the EnumLabels of the columns of tables whose type
// is an enum (or a domain over one), for when:'s check of the strings it
// compares them with.
func readEnumLabels(ctx context.Context, conn *pgx.Conn, tables map[string]mapper.TableSchema) error {
	var oids []uint32
	for _, ts := range tables {
		for _, oid := range ts.Types {
			if oid >= 16384 && !slices.Contains(oids, oid) {
				oids = append(oids, oid)
			}
		}
	}
	if len(oids) == 0 {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT enumtypid, array_agg(enumlabel::text ORDER BY enumsortorder)
		FROM pg_enum WHERE enumtypid = ANY($1::oid[]) GROUP BY 1`, oids)
	if err != nil {
		return fmt.Errorf("read enum labels: %w", err)
	}
	labels := map[uint32][]string{}
	for rows.Next() {
		var oid uint32
		var l []string
		if err := rows.Scan(&oid, &l); err != nil {
			rows.Close()
			return fmt.Errorf("read enum labels: %w", err)
		}
		labels[oid] = l
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read enum labels: %w", err)
	}
	for name, ts := range tables {
		for i, oid := range ts.Types {
			if l, ok := labels[oid]; ok && i < len(ts.Columns) {
				if ts.EnumLabels == nil {
					ts.EnumLabels = map[string][]string{}
				}
				ts.EnumLabels[ts.Columns[i]] = l
			}
		}
		tables[name] = ts
	}
	return nil
}

// partitionIdentity is the replica identity of a partitioned rule table's
// tree. PostgreSQL keeps REPLICA IDENTITY per table: ALTER TABLE on a
// partitioned table sets neither its partitions' nor those created or
// attached later, and pgoutput, also when it publishes via the root,
// sends an UPDATE's or DELETE's old row as the leaf partition the row is
// in has it (TestPartitionedReplicaIdentityIsPerLeaf). walhook's mapper
// in turn reads the identity the partitioned table's own Relation message
// announces. So old values reach rules only when the table and every leaf
// are FULL, and readSourceSchema gives a partitioned table FULL only then
// (else its own identity when that is not FULL, else the first leaf's
// that is not), with the key columns every table of the tree sends.
type partitionIdentity struct {
	own     byte            // the partitioned table's own relreplident
	leaves  int             // leaf partitions (plain tables)
	notFull []string        // leaf partitions whose REPLICA IDENTITY is not FULL
	ident   map[string]byte // leaf partition in notFull → its relreplident
}

// toAlter lists the tables ALTER TABLE … REPLICA IDENTITY FULL must be
// run on for t's tree to send old rows whole: t itself unless FULL, then
// the leaf partitions that are not.
func (p *partitionIdentity) toAlter(t string) []string {
	var out []string
	if p.own != 'f' {
		out = append(out, t)
	}
	return append(out, p.notFull...)
}

// readLeafIdentities reads the leaf partitions (pg_partition_tree, at any
// depth; foreign partitions are not replicated) of the partitioned tables
// in parts and folds their identity into schema, as partitionIdentity
// says.
func readLeafIdentities(ctx context.Context, conn *pgx.Conn, schema map[string]mapper.TableSchema, parts map[string]*partitionIdentity) error {
	if len(parts) == 0 {
		return nil
	}
	var oids []uint32
	byOID := map[uint32]string{}
	for t := range parts {
		oids = append(oids, schema[t].OID)
		byOID[schema[t].OID] = t
	}
	rows, err := conn.Query(ctx, `
		SELECT root.oid, ln.nspname || '.' || l.relname, l.relreplident::text,
		       array(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = l.oid AND a.attnum > 0
		               AND NOT a.attisdropped AND a.attgenerated = ''
		               AND (l.relreplident = 'f' OR a.attnum = ANY (SELECT unnest(i.indkey::int2[]) FROM pg_index i
		                    WHERE i.indrelid = l.oid AND CASE l.relreplident WHEN 'd' THEN i.indisprimary
		                                                                     WHEN 'i' THEN i.indisreplident ELSE false END)))
		FROM unnest($1::oid[]) AS root(oid)
		CROSS JOIN LATERAL pg_partition_tree(root.oid) pt
		JOIN pg_class l ON l.oid = pt.relid JOIN pg_namespace ln ON ln.oid = l.relnamespace
		WHERE pt.isleaf AND l.relkind = 'r'
		ORDER BY 2`, oids)
	if err != nil {
		return fmt.Errorf("read partitions' replica identity: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var root uint32
		var leaf, ident string
		var keys []string
		if err := rows.Scan(&root, &leaf, &ident, &keys); err != nil {
			return fmt.Errorf("read partitions' replica identity: %w", err)
		}
		t := byOID[root]
		p, ts := parts[t], schema[t]
		p.leaves++
		ts.Keys = slices.DeleteFunc(slices.Clone(ts.Keys), func(k string) bool { return !slices.Contains(keys, k) })
		if ident != "f" {
			if p.ident == nil {
				p.ident = map[string]byte{}
			}
			p.notFull = append(p.notFull, leaf)
			p.ident[leaf] = ident[0]
			if ts.ReplicaIdentity == 'f' {
				ts.ReplicaIdentity = ident[0]
			}
		}
		schema[t] = ts
	}
	return wrapErr("read partitions' replica identity", rows.Err())
}

// splitQualified turns "table" into ("public", "table"), like the mapper
// does for rule tables.
func splitQualified(t string) (schema, table string) {
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}

// publicationFacts is how a publication sends the rule tables' changes:
// under which names (pg_publication_tables, which lists a partitioned
// table itself only with publish_via_partition_root, and its partitions
// otherwise), and whether filtered (pg_publication_rel's row filter and
// column list).
type publicationFacts struct {
	name                    string
	exists, allTables, root bool // root: publish_via_partition_root
	owner                   string
	mine                    bool                // this role may alter it
	listed                  []string            // the names changes arrive under
	rowFilter               map[string]string   // listed table → WHERE, when it has one
	columns                 map[string][]string // listed table → column list, when it has one
	partitioned             map[string]bool     // rule table → relkind 'p'
	ancestors               map[string][]string // rule or listed table → the tables it is a partition of, nearest first
	publishes               map[string]bool     // insert, update, delete → whether it publishes them
}

// unpublished returns the operations of ops (sorted) that the
// publication does not publish (its publish option): PostgreSQL sends no
// change of them, not even an error.
func (f *publicationFacts) unpublished(ops []string) []string {
	var out []string
	for _, op := range ops {
		if !f.publishes[op] {
			out = append(out, op)
		}
	}
	return out
}

// publishFix is the statement that makes the publication publish every
// operation, for its owner to run when it is not this role's.
func (f *publicationFacts) publishFix() string {
	fix := fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');", sqlIdent(f.name))
	if !f.mine {
		fix = fmt.Sprintf("have %s (or a superuser) run %s", f.owner, fix)
	}
	return fix
}

// readPublication reads publication pub's facts about tables. The row
// filter and column list are read through to_jsonb, NULL on a server
// older than them (PostgreSQL 14).
func readPublication(ctx context.Context, conn *pgx.Conn, pub string, tables []string) (*publicationFacts, error) {
	f := &publicationFacts{name: pub, rowFilter: map[string]string{}, columns: map[string][]string{},
		partitioned: map[string]bool{}, ancestors: map[string][]string{}}
	var ins, upd, del bool
	err := conn.QueryRow(ctx, `
		SELECT count(*) > 0, coalesce(bool_or(p.puballtables), false), coalesce(bool_or(p.pubviaroot), false),
		       coalesce(max(pg_get_userbyid(p.pubowner)), ''), coalesce(bool_or(pg_has_role(current_user, p.pubowner, 'USAGE') OR r.rolsuper), false),
		       coalesce(bool_or(p.pubinsert), false), coalesce(bool_or(p.pubupdate), false), coalesce(bool_or(p.pubdelete), false)
		FROM pg_publication p, pg_roles r WHERE p.pubname = $1 AND r.rolname = current_user`, pub).
		Scan(&f.exists, &f.allTables, &f.root, &f.owner, &f.mine, &ins, &upd, &del)
	f.publishes = map[string]bool{"insert": ins, "update": upd, "delete": del}
	if err != nil || !f.exists {
		return f, wrapErr("read publication "+pub, err)
	}
	rows, err := conn.Query(ctx, `
		SELECT pt.schemaname || '.' || pt.tablename,
		       coalesce(to_jsonb(pt) ->> 'rowfilter', CASE WHEN to_jsonb(pr) ->> 'prqual' IS NOT NULL THEN 'a row filter' END),
		       to_jsonb(pr) ->> 'prattrs' IS NOT NULL,
		       array(SELECT a.attname::text FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum IN (SELECT x::int2 FROM jsonb_array_elements_text(
		                 CASE jsonb_typeof(to_jsonb(pr) -> 'prattrs') WHEN 'array' THEN to_jsonb(pr) -> 'prattrs' END) AS x)
		             ORDER BY a.attnum),
		       array(SELECT an.nspname || '.' || ac.relname
		             FROM pg_partition_ancestors(c.oid) WITH ORDINALITY AS a(relid, i)
		             JOIN pg_class ac ON ac.oid = a.relid JOIN pg_namespace an ON an.oid = ac.relnamespace
		             WHERE a.relid <> c.oid ORDER BY a.i)
		FROM pg_publication_tables pt
		JOIN pg_publication p ON p.pubname = pt.pubname
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid AND pr.prrelid = c.oid
		WHERE pt.pubname = $1 ORDER BY 1`, pub)
	if err != nil {
		return nil, wrapErr("read publication tables", err)
	}
	for rows.Next() {
		var t string
		var where *string
		var hasColumns bool
		var cols, anc []string
		if err := rows.Scan(&t, &where, &hasColumns, &cols, &anc); err != nil {
			rows.Close()
			return nil, wrapErr("read publication tables", err)
		}
		f.listed = append(f.listed, t)
		f.ancestors[t] = anc
		if where != nil {
			f.rowFilter[t] = *where
		}
		if hasColumns {
			f.columns[t] = cols
		}
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr("read publication tables", err)
	}
	schemas := make([]string, len(tables))
	names := make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = splitQualified(t)
	}
	rows, err = conn.Query(ctx, `
		SELECT n.nspname || '.' || c.relname, c.relkind = 'p',
		       array(SELECT an.nspname || '.' || ac.relname
		             FROM pg_partition_ancestors(c.oid) WITH ORDINALITY AS a(relid, i)
		             JOIN pg_class ac ON ac.oid = a.relid JOIN pg_namespace an ON an.oid = ac.relnamespace
		             WHERE a.relid <> c.oid ORDER BY a.i)
		FROM unnest($1::text[], $2::text[]) AS want(schema, name)
		JOIN pg_namespace n ON n.nspname = want.schema
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = want.name`, schemas, names)
	if err != nil {
		return nil, wrapErr("read partitions", err)
	}
	for rows.Next() {
		var t string
		var partitioned bool
		var anc []string
		if err := rows.Scan(&t, &partitioned, &anc); err != nil {
			rows.Close()
			return nil, wrapErr("read partitions", err)
		}
		f.partitioned[t] = partitioned
		f.ancestors[t] = anc
	}
	return f, wrapErr("read partitions", rows.Err())
}

func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// publicationProblem is a rule table whose changes the publication does
// not send as the rules need them.
type publicationProblem struct {
	table      string
	missing    bool // not published at all: the callers' own message
	msg, fix   string
	setupFixes bool // walhook setup is the whole fix
}

// problems lists, per rule table, what keeps its changes from reaching
// its rules whole and under its name. A publication walhook may alter is
// put right by walhook setup; for another role's, the fix is the
// statement its owner runs — the one setup would.
func (f *publicationFacts) problems(tables []string) []publicationProblem {
	byOwner := func(stmt string) string {
		return fmt.Sprintf("have %s (or a superuser) run %s", f.owner, stmt)
	}
	setTable := fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s;", sqlIdent(f.name), sqlTables(tables))
	var out []publicationProblem
	for _, t := range tables {
		p := publicationProblem{table: t}
		viaAncestor := ""
		for _, a := range f.ancestors[t] {
			if slices.Contains(f.listed, a) {
				viaAncestor = a
				break
			}
		}
		switch {
		case slices.Contains(f.listed, t):
			var what []string
			if w, ok := f.rowFilter[t]; ok {
				what = append(what, "a row filter WHERE "+w+" (an UPDATE that moves a row into or out of it arrives as an INSERT or a DELETE, so update rules miss it)")
			}
			if cols, ok := f.columns[t]; ok {
				what = append(what, "a column list ("+strings.Join(cols, ", ")+") (the other columns never arrive, and rules that read them stop walhook run)")
			}
			if len(what) == 0 {
				continue
			}
			p.msg = fmt.Sprintf("publishes %s with %s", t, strings.Join(what, " and "))
			p.fix = byOwner(setTable + " (without WHERE or a column list)")
		case viaAncestor != "":
			p.msg = fmt.Sprintf("publishes %s via its root (publish_via_partition_root), so the changes of its partition %s arrive as %s and rules on %s never fire",
				viaAncestor, t, viaAncestor, t)
			if slices.Contains(tables, viaAncestor) {
				p.fix = fmt.Sprintf("write the rules of %s on %s (a when: on the partition key selects its rows)", t, viaAncestor)
				out = append(out, p)
				continue
			}
			p.fix = byOwner(setTable)
		case f.partitioned[t] && !f.root:
			p.msg = fmt.Sprintf("does not publish %s under its name: it is partitioned and publish_via_partition_root is off, so PostgreSQL sends its partitions' changes under their own names", t)
			p.fix = byOwner(fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = true);", sqlIdent(f.name)))
		default:
			p.missing = true
		}
		if f.mine {
			p.fix, p.setupFixes = "walhook setup", true
		}
		out = append(out, p)
	}
	return out
}

// sqlTables renders rule tables as a list for SQL.
func sqlTables(tables []string) string {
	q := make([]string, len(tables))
	for i, t := range tables {
		q[i] = sqlTable(t)
	}
	return strings.Join(q, ", ")
}

// readUnlogged returns, per rule table of tables that exists, the tables
// of it that are UNLOGGED, whose changes write no WAL and so never reach
// logical replication: the table itself, or a leaf partition of it.
// PostgreSQL refuses ALTER TABLE … SET UNLOGGED on a table a publication
// names, but not on a partition of a partitioned table published via the
// root, nor CREATE UNLOGGED TABLE … PARTITION OF it (or ATTACH of an
// unlogged table): that partition's changes are then lost with no error
// anywhere (TestUnloggedPartitionIsRefusedAndStopsTheRun).
func readUnlogged(ctx context.Context, conn *pgx.Conn, tables []string) (map[string][]string, error) {
	return readRuleRelations(ctx, conn, tables, "l.relpersistence = 'u' AND l.relkind = 'r'", "read unlogged tables")
}

// readRuleRelations returns, per rule table of tables, the relations
// among the table itself and its leaf partitions (l) that meet cond.
func readRuleRelations(ctx context.Context, conn *pgx.Conn, tables []string, cond, what string) (map[string][]string, error) {
	schemas := make([]string, len(tables))
	names := make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = splitQualified(t)
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname || '.' || c.relname, ln.nspname || '.' || l.relname
		FROM unnest($1::text[], $2::text[]) AS want(schema, name)
		JOIN pg_namespace n ON n.nspname = want.schema
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = want.name AND c.relkind IN ('r', 'p')
		JOIN pg_class l ON l.oid = c.oid OR l.oid IN (SELECT pt.relid FROM pg_partition_tree(c.oid) pt WHERE pt.isleaf)
		JOIN pg_namespace ln ON ln.oid = l.relnamespace
		WHERE `+cond+`
		ORDER BY 1, 2`, schemas, names)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out := map[string][]string{}
	var t, leaf string
	_, err = pgx.ForEachRow(rows, []any{&t, &leaf}, func() error {
		out[t] = append(out[t], leaf)
		return nil
	})
	return out, wrapErr(what, err)
}

// unloggedLines is a line with its fix for each table of unlogged (see
// readUnlogged), in the order of tables.
func unloggedLines(tables []string, unlogged map[string][]string) []string {
	var out []string
	for _, t := range tables {
		for _, u := range unlogged[t] {
			what, fix := u, unloggedFix(u)
			if u != t {
				what, fix = "partition "+u+" of "+t, fmt.Sprintf("ALTER TABLE %s SET LOGGED;", sqlTable(u))
			}
			out = append(out, fmt.Sprintf("  %s is UNLOGGED: it writes no WAL, so logical replication never sees its changes — fix: %s",
				what, fix))
		}
	}
	return out
}

// readForeignPartitions returns, per partitioned rule table of tables,
// its leaf partitions that are foreign tables: PostgreSQL lets one be
// created or attached under a published table, and the rows routed to it
// are written on another server, so none of their changes is in this
// server's WAL. That can be meant (old partitions moved to an archive
// server), so check warns and does not fail.
func readForeignPartitions(ctx context.Context, conn *pgx.Conn, tables []string) (map[string][]string, error) {
	// A rule table itself is never foreign (the check names those as
	// not tables): only a leaf partition can be.
	return readRuleRelations(ctx, conn, tables, "l.relkind = 'f'", "read foreign partitions")
}
