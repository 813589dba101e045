package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
)

// runSetup creates what walhook run needs, idempotently: the store schema
// (migrated to this binary's version), the publication of the rule tables
// and then the slot. It prints one line per thing it did or found.
func runSetup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("setup", stderr)
	cfgPath := configFlag(fs)
	identity := fs.Bool("replica-identity", false,
		"also ALTER TABLE … REPLICA IDENTITY FULL on the tables whose rules read old values")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	m, err := compileMapper(cfg, "", nil)
	if err != nil {
		return err
	}
	tables := m.Tables()

	// The rules must fit the live schema first: a publication naming a
	// missing table fails half-way, and nothing should change then.
	if err := checkDSNs(cfg); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		return fmt.Errorf("setup: connect to the source: %w", err)
	}
	schema, err := readSourceSchema(ctx, conn, tables)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	problems, err := ruleSchemaErrors(cfg, m, schema)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	var full []string
	var mismatch []string
	for _, p := range problems {
		switch {
		case p.table == "":
			mismatch = append(mismatch, fmt.Sprintf("  %v — fix: %s", p.err, p.fix))
		case !slices.Contains(full, p.table):
			full = append(full, p.table)
		}
	}
	noIdentity := tablesWithoutIdentity(schema, tables)
	for _, t := range noIdentity {
		if !slices.Contains(full, t) {
			full = append(full, t)
		}
	}
	if len(noIdentity) > 0 && !*identity {
		mismatch = append(mismatch, fmt.Sprintf("  %s have no replica identity (no primary key): publishing them would make every UPDATE and DELETE on them fail"+
			" — fix: walhook setup --replica-identity (or ALTER TABLE … REPLICA IDENTITY FULL, or add a primary key)", strings.Join(noIdentity, ", ")))
	}
	if len(mismatch) > 0 {
		return fmt.Errorf("setup: the source schema is not ready for the rules; nothing changed:\n%s", strings.Join(mismatch, "\n"))
	}

	pool, err := connectStore(ctx, cfg.Store.DSN)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	applied, err := dispatch.Migrate(ctx, pool, cfg.Store.Schema)
	pool.Close()
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "store schema %s already at version %d\n", cfg.Store.Schema, dispatch.LatestSchemaVersion())
	} else {
		fmt.Fprintf(stdout, "store schema %s: applied %s (now version %d)\n",
			cfg.Store.Schema, strings.Join(applied, ", "), dispatch.LatestSchemaVersion())
	}

	opts := cdc.SetupOptions{Slot: cfg.Source.Slot, Publication: cfg.Source.Publication, Tables: tables}
	if *identity {
		opts.ReplicaIdentityFull = full
	}
	did, err := cdc.Setup(ctx, cfg.Source.DSN, opts)
	for _, line := range did {
		fmt.Fprintln(stdout, line)
	}
	if err != nil {
		return err
	}
	if !*identity && len(full) > 0 {
		fmt.Fprintf(stdout, "warn: rules read old values of %s, whose REPLICA IDENTITY does not send them; "+
			"walhook run refuses them until you run walhook setup --replica-identity (or ALTER TABLE … REPLICA IDENTITY FULL)\n",
			strings.Join(full, ", "))
	}
	return nil
}
