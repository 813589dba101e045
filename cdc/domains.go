package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// firstUserOID is FirstNormalObjectId: OIDs below it are built in.
const firstUserOID = 16384

// domainLookupTimeout bounds one lookup of new types.
const domainLookupTimeout = 15 * time.Second

// resolveDomains looks up the types of rel's columns that are not built
// in and not looked up before: a domain decodes as the built-in type it
// ends in (a domain over int4 is a number, not text). pgoutput names only
// the domain's own OID. The lookup runs on a normal connection (the
// replication connection is streaming) once per new type, so only a
// Relation message that brings new types costs a round trip; a failed
// lookup ends the session, and the reconnect tries again.
func (ss *session) resolveDomains(rel *Relation) error {
	var oids []uint32
	for _, c := range rel.Columns {
		if _, seen := ss.dec.vals.base[c.TypeOID]; c.TypeOID >= firstUserOID && !seen {
			oids = append(oids, c.TypeOID)
		}
	}
	if len(oids) == 0 {
		return nil
	}
	// Bounded well under wal_sender_timeout (60 s by default): the loop
	// sends no status while it waits here.
	ctx, cancel := context.WithTimeout(ss.ctx, domainLookupTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, ss.s.sqlCfg)
	if err != nil {
		return fmt.Errorf("look up the types of %s: connect: %w", rel.Table(), err)
	}
	defer closeQuietly(conn)
	rows, err := conn.Query(ctx, `
		WITH RECURSIVE d(oid, base) AS (
		    SELECT t.oid, t.typbasetype FROM pg_type t WHERE t.oid = ANY($1) AND t.typtype = 'd'
		    UNION ALL
		    SELECT d.oid, t.typbasetype FROM d JOIN pg_type t ON t.oid = d.base AND t.typtype = 'd')
		SELECT d.oid, d.base FROM d JOIN pg_type b ON b.oid = d.base AND b.typtype <> 'd'`, oids)
	if err != nil {
		return fmt.Errorf("look up the types of %s: %w", rel.Table(), err)
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]uint32, error) {
		var p [2]uint32
		err := r.Scan(&p[0], &p[1])
		return p, err
	})
	if err != nil {
		return fmt.Errorf("look up the types of %s: %w", rel.Table(), err)
	}
	if ss.dec.vals.base == nil {
		ss.dec.vals.base = make(map[uint32]uint32)
	}
	for _, oid := range oids {
		ss.dec.vals.base[oid] = 0 // not a domain (an enum, an extension type)
	}
	for _, p := range found {
		if p[1] < firstUserOID { // a domain over a user type (an enum) stays text
			ss.dec.vals.base[p[0]] = p[1]
		}
	}
	return nil
}
