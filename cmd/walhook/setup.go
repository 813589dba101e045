package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/dispatch"
)

// runSetup creates what walhook run needs, idempotently: the store schema
// (migrated to this binary's version), the publication of the rule tables
// and then the slot. It prints one line per thing it did or found. With
// --skip-to it moves the store's cursor forward and does nothing else.
func runSetup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("setup", stderr)
	cfgPath := configFlag(fs)
	identity := fs.Bool("replica-identity", false,
		"also ALTER TABLE … REPLICA IDENTITY FULL on the tables whose rules read old values, or large values an update may leave unchanged")
	acceptGap := fs.Bool("accept-gap", false,
		"when the store's cursor is behind the slot (a new slot after a lost one or a failover), or past the server's WAL "+
			"after a failover to a standby that was behind (a fork), move it to the slot: "+
			"the changes in between are lost and become no events")
	acceptSystem := fs.Bool("accept-new-system", false,
		"when the store's cursor was written while reading another PostgreSQL system because the source database moved "+
			"to a new cluster (pg_upgrade, a dump and restore, a blue/green switchover), start it at the new slot and keep the "+
			"store's events and deliveries: changes the old cluster wrote after walhook stopped reading it become no events")
	skipTo := fs.String("skip-to", "",
		"move the store's cursor forward to `LSN` (the end of a transaction walhook run stopped on) and change nothing else: "+
			"the transactions committed before it are skipped and become no events")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	skip, skipping, err := skipToFlag(fs, *skipTo, *acceptGap, *acceptSystem, *identity)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if skipping {
		if err := checkDSNs(cfg); err != nil {
			return err
		}
		line, err := setupSkip(ctx, cfg, skip)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		fmt.Fprintln(stdout, line)
		return nil
	}
	m, err := compileMapper(cfg, "", nil)
	if err != nil {
		return err
	}
	// A config run refuses gets no slot: one left behind keeps WAL.
	if err := refusedByRun(cfg); err != nil {
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
	// What the slot needs of the server comes before anything changes:
	// else the store and the publication are made and the slot fails.
	if err := slotPrerequisites(ctx, cfg, conn); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return err
	}
	opts := cdc.SetupOptions{Slot: cfg.Source.Slot, Publication: cfg.Source.Publication, Tables: tables, Operations: ruleOperations(cfg)}
	if cfg.Store.DSN == cfg.Source.DSN {
		opts.StoreSchema = cfg.Store.Schema
	}
	// A publication walhook may not change (the DBA's) that does not fit
	// the rules is refused before the store is migrated, too.
	if err := cdc.RefusePublication(ctx, conn, opts); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return err
	}
	schema, parts, err := readSourceSchema(ctx, conn, tables)
	var large map[string][]string
	if err == nil {
		large, err = largeValueRisks(ctx, conn, m, schema, tables)
	}
	var facts map[string]tableFacts
	if err == nil {
		facts, err = readTableFacts(ctx, conn, tables)
	}
	var unlogged map[string][]string
	if err == nil {
		unlogged, err = readUnlogged(ctx, conn, tables)
	}
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	problems, err := ruleSchemaErrors(cfg, m, schema, parts)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	var full []string
	var mismatch []string
	for _, t := range tables {
		if facts[t].unlogged {
			mismatch = append(mismatch, fmt.Sprintf("  %s %s — fix: %s", t, unloggedProblem, unloggedFix(t)))
			delete(unlogged, t)
		}
	}
	mismatch = append(mismatch, unloggedLines(tables, unlogged)...)
	for _, p := range problems {
		switch {
		case p.table == "":
			mismatch = append(mismatch, fmt.Sprintf("  %v — fix: %s", p.err, p.fix))
		case !slices.Contains(full, p.table):
			full = append(full, p.table)
		}
	}
	// Large values an update leaves unchanged reach rules only with FULL:
	// --replica-identity covers those tables too (check warns about them).
	for _, t := range tables {
		if len(large[t]) > 0 && *identity && !slices.Contains(full, t) {
			full = append(full, t)
		}
	}
	noIdentity := tablesWithoutIdentity(schema, tables)
	for _, t := range noIdentity {
		if !slices.Contains(full, t) {
			full = append(full, t)
		}
	}
	if len(noIdentity) > 0 && !*identity {
		have, them := "have", "them"
		if len(noIdentity) == 1 {
			have, them = "has", "it"
		}
		mismatch = append(mismatch, fmt.Sprintf("  %s %s no replica identity (no primary key): publishing %s would make every UPDATE and DELETE on %s fail"+
			" — fix: walhook setup --replica-identity (or ALTER TABLE … REPLICA IDENTITY FULL, or add a primary key)", strings.Join(noIdentity, ", "), have, them, them))
	}
	if len(mismatch) > 0 {
		return fmt.Errorf("setup: the source schema is not ready for the rules; nothing changed:\n%s", strings.Join(mismatch, "\n"))
	}

	pool, err := connectStore(ctx, cfg.Store.DSN)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := storeWritable(ctx, pool); err != nil {
		pool.Close()
		return fmt.Errorf("setup: store %s: %w; nothing changed%s", describeDSN(cfg.Store.DSN), err, readOnlyFix(cfg, err))
	}
	// Before the store is migrated and the slot created: a config
	// belongs on a store schema of its own (a new one holds no cursor).
	if err := dispatch.RefuseSharedStore(ctx, pool, cfg.Store.Schema, cfg.Source.Slot); err != nil {
		pool.Close()
		return fmt.Errorf("setup: store %s: %w", describeDSN(cfg.Store.DSN), err)
	}
	applied, err := dispatch.Migrate(ctx, pool, cfg.Store.Schema)
	if err != nil {
		pool.Close()
		return fmt.Errorf("setup: %w", err)
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "store schema %s already at version %d\n", cfg.Store.Schema, dispatch.LatestSchemaVersion())
	} else {
		fmt.Fprintf(stdout, "store schema %s: applied %s (now version %d)\n",
			cfg.Store.Schema, strings.Join(applied, ", "), dispatch.LatestSchemaVersion())
	}
	moved, err := dispatch.CatchUpSequences(ctx, pool, cfg.Store.Schema)
	pool.Close()
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	for _, m := range moved {
		fmt.Fprintf(stdout, "moved the store's sequence %s (PostgreSQL does not replicate sequences: the store was copied by logical replication)\n", m)
	}

	if *identity {
		opts.ReplicaIdentityFull = full
	}
	opts.Waiting = func(line string) { fmt.Fprintln(stdout, line) }
	did, err := cdc.Setup(ctx, cfg.Source.DSN, opts)
	for _, line := range did {
		fmt.Fprintln(stdout, line)
	}
	if err != nil {
		return err
	}
	gapLine, gapErr := setupCursor(ctx, cfg, *acceptGap, *acceptSystem)
	if gapLine != "" {
		fmt.Fprintln(stdout, gapLine)
	}
	if !*identity && len(full) > 0 {
		fmt.Fprintf(stdout, "warn: rules read old values of %s, whose REPLICA IDENTITY does not send them; "+
			"walhook run refuses them until you run walhook setup --replica-identity (or ALTER TABLE … REPLICA IDENTITY FULL)\n",
			strings.Join(full, ", "))
	}
	return gapErr
}

// slotPrerequisites refuses a source server that cannot take walhook's
// slot: a standby, or what check's wal_level, role and
// max_replication_slots lines fail on (with their fixes).
func slotPrerequisites(ctx context.Context, cfg *config.Config, conn *pgx.Conn) error {
	if err := cdc.RefuseStandby(ctx, conn); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	c := &checker{cfg: cfg}
	for _, step := range []func(context.Context, *pgx.Conn) error{c.checkServer, c.checkRole, c.checkCapacity} {
		if err := step(ctx, conn); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	var problems []string
	for _, l := range c.lines {
		// A WAL sender is run's need, not setup's.
		if l.status == statusFail && l.what != "max_wal_senders" {
			problems = append(problems, "  "+l.what+": "+l.msg+" — fix: "+l.fix)
		}
	}
	// A slot of that name walhook cannot use (a standby's physical slot,
	// another database's) would fail setup after the store and the
	// publication were made.
	if exists, err := cdc.ExistingSlot(ctx, conn, cfg.Source.Slot); err != nil {
		if !exists {
			return fmt.Errorf("setup: %w", err)
		}
		problems = append(problems, "  slot: "+err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("setup: the source server cannot take replication slot %s; nothing changed:\n%s",
			cfg.Source.Slot, strings.Join(problems, "\n"))
	}
	return nil
}

// setupCursor compares the store's cursor with the slot's confirmed
// position. A cursor behind it (the slot was lost and created again, the
// source failed over, the store was restored) is a gap: the changes in
// between can no longer be read, and walhook run refuses to start. With
// accept the cursor moves to the slot and the gap is reported; without,
// the gap is an error that says how to accept it.
//
// A cursor from another system is not a gap of this one: acceptSystem,
// not accept, takes it to this system (a database moved to a new
// cluster), so that a config pointed at a different database by mistake
// is not taken over by a reflexive --accept-gap.
func setupCursor(ctx context.Context, cfg *config.Config, accept, acceptSystem bool) (string, error) {
	gap, err := readCursorGap(ctx, cfg)
	if err != nil || gap == nil {
		return "", err
	}
	if gap.otherSystem != "" {
		if !acceptSystem {
			return "", fmt.Errorf("setup: %s — fix: %s", gap, otherSystemFix)
		}
		return setupAcceptSystem(ctx, cfg, gap)
	}
	if !accept && gap.walEnd != 0 {
		// Remembered, so that check and run refuse the fork after the
		// server's WAL has passed the cursor.
		if pool, err := connectStore(ctx, cfg.Store.DSN); err == nil {
			err = dispatch.RecordFork(ctx, pool, cfg.Store.Schema, cfg.Source.Slot, gap.walEnd)
			pool.Close()
			if err != nil {
				return "", fmt.Errorf("setup: %w", err)
			}
		}
	}
	if !accept {
		return "", fmt.Errorf("setup: %s — fix: walhook setup --accept-gap, "+
			"which moves the cursor to %s (backfill the changes in between if they matter)", gap, gap.slot)
	}
	pool, err := connectStore(ctx, cfg.Store.DSN)
	if err != nil {
		return "", fmt.Errorf("setup: %w", err)
	}
	defer pool.Close()
	// A fork: the ids of transactions of the new history get the next id
	// epoch, from where that history begins. With a slot older than a
	// promotion in the server's timeline history, that is the first such
	// promotion (the transactions before it are in both histories, stored
	// already, and keep their ids; should the store have followed a later
	// timeline, what lies between is sent again under new ids — never
	// lost); else the slot.
	epochFrom := gap.slot
	warn := ""
	if gap.walEnd != 0 {
		switches, _, err := cdc.TimelineSwitches(ctx, cfg.Source.DSN)
		if err != nil {
			warn = fmt.Sprintf("\nwarn: could not read the server's timeline history (%v): the new history is taken to begin at the slot, "+
				"so changes the two histories share after it may be delivered again under new webhook ids", err)
		}
		for _, sw := range switches {
			if sw > epochFrom {
				epochFrom = sw
				break
			}
		}
	}
	moved, err := dispatch.AcceptGap(ctx, pool, cfg.Store.Schema, cfg.Source.Slot, gap.cursor, gap.slot, epochFrom)
	if err != nil {
		return "", fmt.Errorf("setup: %w", err)
	}
	if !moved {
		return "", fmt.Errorf("setup: the store's cursor for slot %s moved while accepting the gap (is a walhook running?); "+
			"run walhook check and try again", cfg.Source.Slot)
	}
	if gap.walEnd != 0 {
		return fmt.Sprintf("accepted a fork: the store's cursor for slot %s moved back from %s to %s, the slot's position on "+
			"this server; events stored past it came from the old history (backfill or reconcile what matters)%s",
			cfg.Source.Slot, gap.cursor, gap.slot, warn), nil
	}
	return fmt.Sprintf("accepted a gap: the store's cursor for slot %s moved from %s to %s; "+
		"changes committed in between became no events (backfill them if they matter)", cfg.Source.Slot, gap.cursor, gap.slot), nil
}

// setupAcceptSystem takes the store's cursor from another PostgreSQL
// system to this one, at the slot setup created here: the source database
// moved to a new cluster (pg_upgrade gives the cluster a new system
// identifier and carries no logical slot; a restore or a blue/green
// switchover is a new cluster). Nothing of the old cluster can be read
// here, so whether changes were lost is the operator's to know: none when
// walhook had read everything the old cluster wrote before the move.
func setupAcceptSystem(ctx context.Context, cfg *config.Config, gap *cursorGap) (string, error) {
	if gap.slot == 0 {
		return "", fmt.Errorf("setup: replication slot %s does not exist, so there is no position to start the cursor from", cfg.Source.Slot)
	}
	pool, err := connectStore(ctx, cfg.Store.DSN)
	if err != nil {
		return "", fmt.Errorf("setup: %w", err)
	}
	defer pool.Close()
	moved, err := dispatch.AcceptNewSystem(ctx, pool, cfg.Store.Schema, cfg.Source.Slot, gap.otherSystem, gap.system, gap.slot)
	if err != nil {
		return "", fmt.Errorf("setup: %w", err)
	}
	if !moved {
		return "", fmt.Errorf("setup: the store's cursor for slot %s changed while accepting the new system (is a walhook running?); "+
			"run walhook check and try again", cfg.Source.Slot)
	}
	return fmt.Sprintf("accepted a new source system: the store's cursor for slot %s was at %s of PostgreSQL system %s and "+
		"starts at %s of system %s, the slot's position; the store's events and deliveries are kept, and changes the old "+
		"system wrote after walhook stopped reading it became no events (none if walhook had caught up before the move)",
		cfg.Source.Slot, gap.cursor, gap.otherSystem, gap.slot, gap.system), nil
}

// cursorGap is a store cursor behind its slot's confirmed position, or
// one written while reading another PostgreSQL system (otherSystem), whose
// positions mean nothing here.
type cursorGap struct {
	name         string
	cursor, slot cdc.LSN
	walEnd       cdc.LSN // set when the cursor is past the server's WAL end
	otherSystem  string
	system       string
}

// otherSystemFix is what to do about a cursor from another system: the
// same database moved to a new cluster keeps its store (the pending
// deliveries, the endpoints, the delivery log), which --accept-new-system takes
// to the new system; a different database needs a store of its own.
const otherSystemFix = "if this is the same database moved to another cluster (pg_upgrade, a dump and restore, " +
	"a blue/green switchover), walhook setup --accept-new-system, which starts the cursor at the new slot and keeps the store's " +
	"events and deliveries (changes the old cluster wrote after walhook stopped reading it became no events; see " +
	"docs/operations.md, \"Upgrading PostgreSQL or moving the database\"); if it is a different database, " +
	"another store.schema for this config"

func (g *cursorGap) String() string {
	if g.otherSystem != "" {
		return fmt.Sprintf("the store's cursor for slot %s was written while reading PostgreSQL system %s, but the source "+
			"is system %s (another cluster: after a pg_upgrade, a dump and restore, a blue/green switchover, or a different database), so its positions mean nothing here "+
			"and walhook run refuses to start", g.name, g.otherSystem, g.system)
	}
	if g.walEnd != 0 {
		return fmt.Sprintf("the store's cursor for slot %s is at %s and was found past the server's WAL end %s: the store "+
			"followed another history of this cluster (a failover to a standby that was behind, or a point-in-time restore), "+
			"and streaming from the cursor would skip every change the server wrote up to it, so walhook run refuses to start",
			g.name, g.cursor, g.walEnd)
	}
	return fmt.Sprintf("the store's cursor for slot %s is at %s, behind the slot's confirmed position %s "+
		"(a slot created again after it was lost or dropped, a failover, a store restored from a backup, or a copy of a store "+
		"that moved elsewhere and went on there): "+
		"the changes in between can no longer be read, so walhook run refuses to start", g.name, g.cursor, g.slot)
}

// readCursorGap returns the gap between the store's cursor and the slot,
// nil when there is none: no slot, no store, no cursor yet, or a cursor
// at or past the slot. A cursor from another source system is returned
// as such (otherSystem).
func readCursorGap(ctx context.Context, cfg *config.Config) (*cursorGap, error) {
	conn, err := pgx.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the source: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Read in this order: the slot, then the cursor, then the server's WAL
	// end. A running walhook stores its cursor before it confirms, so the
	// cursor read after the slot is at or past it, and the WAL end read
	// after the cursor is at or past any cursor of this history.
	var confirmed *string
	var systemID, walEnd string
	err = conn.QueryRow(ctx, `SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1),
		(SELECT system_identifier::text FROM pg_control_system())`, cfg.Source.Slot).
		Scan(&confirmed, &systemID)
	if err != nil {
		return nil, fmt.Errorf("read replication slot %s: %w", cfg.Source.Slot, err)
	}
	var slotLSN cdc.LSN // 0: no slot (after a failover on PostgreSQL 15)
	if confirmed != nil {
		if slotLSN, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return nil, fmt.Errorf("read replication slot %s: %w", cfg.Source.Slot, err)
		}
	}
	pool, err := connectStore(ctx, cfg.Store.DSN)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if err := dispatch.CheckSchema(ctx, pool, cfg.Store.Schema); err != nil {
		return nil, nil // check and run report the schema
	}
	cursor, cursorSystem, ok, err := dispatch.StoredCursor(ctx, pool, cfg.Store.Schema, cfg.Source.Slot)
	if err != nil || !ok {
		return nil, err
	}
	if cursorSystem != "" && cursorSystem != systemID {
		return &cursorGap{name: cfg.Source.Slot, cursor: cursor, slot: slotLSN, otherSystem: cursorSystem, system: systemID}, nil
	}
	if forkEnd, forked, err := dispatch.StoredFork(ctx, pool, cfg.Store.Schema, cfg.Source.Slot); err != nil {
		return nil, err
	} else if forked { // found before; the WAL end may have passed the cursor since
		return &cursorGap{name: cfg.Source.Slot, cursor: cursor, slot: slotLSN, walEnd: forkEnd}, nil
	}
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&walEnd); err != nil {
		return nil, fmt.Errorf("read the server's WAL end: %w", err)
	}
	if end, err := pglogrepl.ParseLSN(walEnd); err == nil && cursor > end {
		return &cursorGap{name: cfg.Source.Slot, cursor: cursor, slot: slotLSN, walEnd: end}, nil
	}
	if confirmed == nil || cursor >= slotLSN {
		return nil, nil
	}
	return &cursorGap{name: cfg.Source.Slot, cursor: cursor, slot: slotLSN}, nil
}

// lsnText is an LSN as PostgreSQL prints it.
var lsnText = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

// skipToFlag reads --skip-to: skipping is false when it was not given. It
// goes with no flag that changes something else.
func skipToFlag(fs *flag.FlagSet, value string, acceptGap, acceptSystem, identity bool) (lsn cdc.LSN, skipping bool, err error) {
	fs.Visit(func(f *flag.Flag) { skipping = skipping || f.Name == "skip-to" })
	if !skipping {
		return 0, false, nil
	}
	switch {
	case acceptGap:
		return 0, false, usageErrorf("setup: --skip-to and --accept-gap do not go together: accept the gap first, then skip")
	case acceptSystem:
		return 0, false, usageErrorf("setup: --skip-to and --accept-new-system do not go together: accept the new system first, then skip")
	case identity:
		return 0, false, usageErrorf("setup: --skip-to and --replica-identity do not go together: --skip-to changes nothing but the cursor")
	}
	// ParseLSN alone takes "0/1A-B" for 0/1A.
	if !lsnText.MatchString(value) {
		err = errors.New("not an LSN")
	} else {
		lsn, err = pglogrepl.ParseLSN(value)
	}
	if err != nil {
		return 0, false, usageErrorf("setup: --skip-to %q is not an LSN (such as 0/16B3748, as walhook run names it)", value)
	}
	return lsn, true, nil
}

// setupSkip moves the store's cursor for the slot forward to `to`, so
// that the next walhook run streams from there and PostgreSQL skips the
// transactions that committed before it: the way past a transaction no
// rule can map (a change written without the old values a rule reads
// comes back the same on every restart) other than changing the rules.
// It refuses while a walhook leads on this store or anything streams
// from the slot: a running walhook streams on from its own position, past
// a cursor moved under it. Holding the leader lock while it moves the
// cursor keeps a standby from taking over in between.
func setupSkip(ctx context.Context, cfg *config.Config, to cdc.LSN) (string, error) {
	slot := cfg.Source.Slot
	pool, err := connectStore(ctx, cfg.Store.DSN)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	if err := dispatch.CheckSchema(ctx, pool, cfg.Store.Schema); errors.Is(err, dispatch.ErrSchemaMissing) {
		return "", fmt.Errorf("there is no walhook store in schema %s, so there is no cursor to move", cfg.Store.Schema)
	} else if err != nil {
		return "", err
	}
	cursor, _, ok, err := dispatch.StoredCursor(ctx, pool, cfg.Store.Schema, slot)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("the store holds no cursor for slot %s (walhook run has stored nothing from it yet), so there is nothing to skip", slot)
	}
	if to <= cursor {
		return "", fmt.Errorf("--skip-to %s: the cursor for slot %s is already at %s; nothing to skip", to, slot, cursor)
	}

	lock, err := pool.Acquire(ctx)
	if err != nil {
		return "", fmt.Errorf("connect to the store: %w", err)
	}
	defer lock.Release()
	key := leaderLockKey(cfg.Store.Schema, slot)
	var got bool
	if err := lock.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&got); err != nil {
		return "", fmt.Errorf("take the leader lock of slot %s: %w", slot, err)
	}
	if !got {
		return "", fmt.Errorf("%w: a walhook leads slot %s on this store (it holds the leader lock); stop every walhook on this store, "+
			"then run setup --skip-to again: a running one streams on from its own position, past a cursor moved under it", cdc.ErrSlotActive, slot)
	}
	defer func() { // else the lock goes with the session, when the pool closes
		_, _ = lock.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key)
	}()

	conn, err := pgx.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		return "", fmt.Errorf("connect to the source: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var active bool
	var pid *int32
	var walEnd string
	err = conn.QueryRow(ctx, `SELECT active, active_pid, pg_current_wal_lsn()::text FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&active, &pid, &walEnd)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("replication slot %s does not exist (walhook setup creates it; see docs/operations.md, recovering from a gap)", slot)
	}
	if err != nil {
		return "", fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	if active {
		p := int32(0)
		if pid != nil {
			p = *pid
		}
		return "", fmt.Errorf("%w: slot %q is held by the server process with PID %d (the walsender of a running walhook?); "+
			"stop that walhook, then run setup --skip-to again: it streams on from its own position, past a cursor moved under it",
			cdc.ErrSlotActive, slot, p)
	}
	end, err := pglogrepl.ParseLSN(walEnd)
	if err != nil {
		return "", fmt.Errorf("read the server's WAL position: %w", err)
	}
	if to > end {
		return "", fmt.Errorf("--skip-to %s is past the server's current WAL position %s; refusing: the cursor would skip "+
			"every change the server writes until it gets there (is this the right server, or the LSN mistyped?)", to, end)
	}
	// A cursor behind the slot, past the WAL or from another system is
	// a gap or a fork, which --accept-gap settles with its own record.
	if gap, err := readCursorGap(ctx, cfg); err != nil {
		return "", err
	} else if gap != nil {
		fix := "walhook setup --accept-gap first"
		if gap.otherSystem != "" {
			fix = otherSystemFix
		}
		return "", fmt.Errorf("%s — fix: %s; nothing was skipped", gap, fix)
	}

	from, err := dispatch.SkipCursor(ctx, pool, cfg.Store.Schema, slot, to)
	if nb := (*dispatch.CursorNotBehindError)(nil); errors.As(err, &nb) {
		return "", fmt.Errorf("--skip-to %s: the cursor for slot %s is already at %s (did a walhook just run?); nothing to skip", to, slot, nb.Cursor)
	}
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("skipped the changes between %s and %s: they will not be mapped or delivered "+
		"(the store's cursor for slot %s moved from %s to %s)", from, to, slot, from, to), nil
}
