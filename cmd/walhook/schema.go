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
// columns, the replica identity (pg_class.relreplident) and the columns that
// identity sends as the old key. Tables that do not exist (or are not plain
// or partitioned tables) are absent from the result, keyed "schema.table".
//
// The catalogs are readable without any privilege on the tables, so a
// missing SELECT grant does not hide a table here; check reports it apart.
// Keys mirror what pgoutput marks as key columns: the primary key under
// DEFAULT, the chosen index under USING INDEX, every column under FULL and
// none under NOTHING.
func readSourceSchema(ctx context.Context, conn *pgx.Conn, tables []string) (map[string]mapper.TableSchema, error) {
	schemas := make([]string, len(tables))
	names := make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = splitQualified(t)
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, c.relname, c.relreplident::text, c.oid,
		       array(SELECT a.attname::text FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		             ORDER BY a.attnum),
		       array(SELECT a.attname::text FROM pg_attribute a
		             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''
		             ORDER BY a.attnum),
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
		return nil, fmt.Errorf("read source schema: %w", err)
	}
	defer rows.Close()
	out := make(map[string]mapper.TableSchema, len(tables))
	for rows.Next() {
		var schema, name, ident string
		var ts mapper.TableSchema
		if err := rows.Scan(&schema, &name, &ident, &ts.OID, &ts.Columns, &ts.Generated, &ts.Keys); err != nil {
			return nil, fmt.Errorf("read source schema: %w", err)
		}
		if ident != "" {
			ts.ReplicaIdentity = ident[0]
		}
		if ts.ReplicaIdentity == 'f' {
			ts.Keys = ts.Columns
		}
		out[schema+"."+name] = ts
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read source schema: %w", err)
	}
	return out, nil
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
}

// readPublication reads publication pub's facts about tables. The row
// filter and column list are read through to_jsonb, NULL on a server
// older than them (PostgreSQL 14).
func readPublication(ctx context.Context, conn *pgx.Conn, pub string, tables []string) (*publicationFacts, error) {
	f := &publicationFacts{name: pub, rowFilter: map[string]string{}, columns: map[string][]string{},
		partitioned: map[string]bool{}, ancestors: map[string][]string{}}
	err := conn.QueryRow(ctx, `
		SELECT count(*) > 0, coalesce(bool_or(p.puballtables), false), coalesce(bool_or(p.pubviaroot), false),
		       coalesce(max(pg_get_userbyid(p.pubowner)), ''), coalesce(bool_or(pg_has_role(current_user, p.pubowner, 'USAGE') OR r.rolsuper), false)
		FROM pg_publication p, pg_roles r WHERE p.pubname = $1 AND r.rolname = current_user`, pub).
		Scan(&f.exists, &f.allTables, &f.root, &f.owner, &f.mine)
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
