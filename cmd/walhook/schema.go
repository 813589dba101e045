package main

import (
	"context"
	"fmt"
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
