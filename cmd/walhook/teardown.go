package main

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
)

// runTeardown drops the slot (so PostgreSQL stops retaining WAL for
// walhook) and the publication, and with --store the store schema. It
// refuses while another process holds the slot, unless --force.
func runTeardown(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("teardown", stderr)
	cfgPath := configFlag(fs)
	store := fs.Bool("store", false, "also drop the store schema (outbox, endpoints, delivery log)")
	force := fs.Bool("force", false, "terminate the process that holds the slot, then drop it")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if err := checkDSNs(cfg); err != nil {
		return err
	}
	if *store {
		// A store it would refuse to drop is refused before the slot and
		// publication go: a refusal changes nothing.
		if _, err := withStore(ctx, cfg, func(*pgx.Conn, bool) (string, error) { return "", nil }); err != nil {
			return fmt.Errorf("teardown: %w; nothing was dropped", err)
		}
	}
	did, err := cdc.Teardown(ctx, cfg.Source.DSN, cfg.Source.Slot, cfg.Source.Publication, *force)
	for _, line := range did {
		fmt.Fprintln(stdout, line)
	}
	if err != nil {
		return err
	}
	if !*store {
		// The store's cursor outlives the slot: a later setup makes a new
		// slot, which starts at the server's WAL then, and the cursor
		// behind it is a gap that setup says so about.
		fmt.Fprintln(stdout, "kept the store (outbox, endpoints, delivery log, cursor): a later walhook setup creates a new slot "+
			"that starts from now, and asks for --accept-gap to leave out the changes in between; teardown --store removes the store too")
		return nil
	}
	line, err := dropStore(ctx, cfg)
	if err != nil {
		return fmt.Errorf("teardown: %w", err)
	}
	fmt.Fprintln(stdout, line)
	return nil
}

// dropStore drops the store schema with everything in it. It refuses a
// schema that is not a walhook store (no schema_version table) or that
// holds a table a rule maps, so a store.schema pointing at an application
// schema (say public) cannot wipe the application's data.
func dropStore(ctx context.Context, cfg *config.Config) (string, error) {
	schema := cfg.Store.Schema
	return withStore(ctx, cfg, func(conn *pgx.Conn, exists bool) (string, error) {
		if !exists {
			return fmt.Sprintf("store schema %s does not exist; nothing to drop", schema), nil
		}
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			return "", fmt.Errorf("drop store schema %s: %w", schema, err)
		}
		return fmt.Sprintf("dropped store schema %s (outbox, endpoints and delivery log)", schema), nil
	})
}

// withStore connects to the store, refuses a store.schema dropStore must
// not drop, and else calls do with whether the schema exists.
func withStore(ctx context.Context, cfg *config.Config, do func(conn *pgx.Conn, exists bool) (string, error)) (string, error) {
	schema := cfg.Store.Schema
	conn, err := pgx.Connect(ctx, cfg.Store.DSN)
	if err != nil {
		return "", fmt.Errorf("connect to the store: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists, isStore bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
		to_regclass($2) IS NOT NULL`, schema, sqlIdent(schema)+".schema_version").Scan(&exists, &isStore)
	if err != nil {
		return "", fmt.Errorf("look up store schema %s: %w", schema, err)
	}
	if !exists {
		return do(conn, false)
	}
	if !isStore {
		return "", fmt.Errorf("schema %s has no schema_version table, so it is not a walhook store; refusing to drop it", schema)
	}
	if cfg.Store.DSN == cfg.Source.DSN {
		for _, r := range cfg.Events {
			if s, _ := splitQualified(r.Table); s == schema {
				return "", fmt.Errorf("schema %s holds %s, which a rule maps; refusing to drop it", schema, r.Table)
			}
		}
	}
	return do(conn, true)
}
