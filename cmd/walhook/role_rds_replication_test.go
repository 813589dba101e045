package main

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/pgtest"
)

// Amazon RDS and Aurora give no role the REPLICATION attribute: replication
// comes with membership in their rds_replication role (the master user
// has it through rds_superuser), and rolreplication stays false. check
// failed the role line for such a role, and since the 2026-12-04 builds
// setup refused before doing anything ("has neither REPLICATION nor
// superuser"), so walhook could not be set up on RDS at all. A member of
// rds_replication passes the role line and setup's prerequisites. (Plain
// PostgreSQL has no such role; the test makes one to stand for RDS's
// catalog: it checks what walhook reads, not RDS's permission check.)
func TestRoleWithRDSReplication(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := pgtest.Shared(t)
	role := "wh_" + strings.ToLower(t.Name())
	if err := c.Exec(ctx, "postgres", `DO $$ BEGIN CREATE ROLE rds_replication; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
		CREATE ROLE `+role+` LOGIN; GRANT rds_replication TO `+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Exec(context.Background(), "postgres", `DROP ROLE IF EXISTS `+role+`; DROP ROLE IF EXISTS rds_replication`)
	})
	dsn := c.NewDatabase(t)
	ckExec(t, dsn, runItemsSchema)
	db := ckDBName(t, dsn)
	s := (&runDB{dsn: dsn, slot: "wh_" + db}).settings()
	s["source.dsn"] = c.DSNAs(role, db)
	file, cfg := runConfig(t, []byte(runItemsConfig), s)

	out, _, _ := pubCLI(t, "check", "--config", file)
	ckWantLines(t, out, `ok    role: `+role+` is a member of rds_replication \(Amazon RDS and Aurora grant replication through it\)$`)
	conn, err := pgx.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := slotPrerequisites(ctx, cfg, conn); err != nil {
		t.Fatalf("setup's prerequisites refuse a member of rds_replication: %v", err)
	}
}
