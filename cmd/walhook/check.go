package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/cpuyield"
	"github.com/walhook/walhook/mapper"
)

// Check line statuses. Only FAIL makes the database not ready; warn is a
// fact worth knowing that does not stop walhook run.
const (
	statusOK   = "ok"
	statusFail = "FAIL"
	statusWarn = "warn"
)

// checkLine is one line of `walhook check` output.
type checkLine struct {
	status string
	what   string // short subject: "wal_level", "table public.x", …
	msg    string
	fix    string // the command that fixes it, when there is one
	// setupFixes: running `walhook setup` is the whole fix.
	setupFixes bool
}

func (l checkLine) String() string {
	s := fmt.Sprintf("%-4s  %s: %s", l.status, l.what, l.msg)
	if l.fix != "" {
		s += " — fix: " + l.fix
	}
	return s
}

// checker collects every check's outcome; nothing stops at the first
// problem, so one run lists every missing prerequisite with its fix.
type checker struct {
	cfg    *config.Config
	m      *mapper.Mapper
	lines  []checkLine
	tables []string // qualified rule tables, in rule order

	// Facts about the source role, shared between checks.
	user      string
	superuser bool
	owned     map[string]bool // rule table → the role owns it (or is superuser)
	schema    map[string]mapper.TableSchema
	parts     map[string]*partitionIdentity // partitioned rule table → its tree's replica identity
	sourceOK  bool                          // connected to the source
	standby   bool                          // the source is in recovery
}

func (c *checker) add(status, what, fix, format string, args ...any) {
	c.lines = append(c.lines, checkLine{status: status, what: what, msg: fmt.Sprintf(format, args...), fix: fix})
}

func (c *checker) ok(what, format string, args ...any) { c.add(statusOK, what, "", format, args...) }
func (c *checker) warn(what, fix, format string, args ...any) {
	c.add(statusWarn, what, fix, format, args...)
}
func (c *checker) fail(what, fix, format string, args ...any) {
	c.add(statusFail, what, fix, format, args...)
}

// failSetup records a problem that `walhook setup` fixes.
func (c *checker) failSetup(what, format string, args ...any) {
	c.add(statusFail, what, "walhook setup", format, args...)
	c.lines[len(c.lines)-1].setupFixes = true
}

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	cfgPath := configFlag(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
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
	c := &checker{cfg: cfg, m: m, tables: m.Tables()}
	fmt.Fprintf(stdout, "config %s: %s on %s, %s\n", cfg.File, plural(len(cfg.Events), "rule"),
		plural(len(c.tables), "table"), plural(len(m.Events()), "event type"))

	if err := checkDSNs(cfg); err != nil {
		return err
	}
	if msg := exposedSecrets(cfg); msg != "" {
		c.warn("config file", exposedSecretsFix(cfg), "%s", msg)
	}
	for _, r := range refusals(cfg) {
		c.fail(r.what, r.fix, "%s", r.msg)
	}
	srcDesc, _ := dsnLabel(cfg.Source.DSN)
	storeDesc, _ := dsnLabel(cfg.Store.DSN)
	fmt.Fprintf(stdout, "source %s\n", srcDesc)
	c.checkSource(ctx)
	fmt.Fprintf(stdout, "store  %s schema=%s\n", storeDesc, cfg.Store.Schema)
	c.checkStore(ctx)
	c.checkCPUYield()

	fails, setupOnly := 0, true
	for _, l := range c.lines {
		fmt.Fprintln(stdout, l)
		if l.status == statusFail {
			fails++
			setupOnly = setupOnly && l.setupFixes
		}
	}
	switch {
	case fails == 0:
		fmt.Fprintln(stdout, "ready: walhook run can start")
		return nil
	case setupOnly:
		fmt.Fprintln(stdout, "not ready: run walhook setup")
	default:
		fmt.Fprintf(stdout, "not ready: %d problem(s) above, each with its fix\n", fails)
	}
	return fmt.Errorf("check: not ready (%d problem(s))", fails)
}

// plural is "1 rule", "2 rules".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// dsnLabel names the server, database and user of dsn — never the
// password, which a DSN may carry.
func dsnLabel(dsn string) (string, error) {
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgconn quotes the whole connection string in its parse errors.
		if why := dsnProblem(dsn, err); why != "" {
			return "", fmt.Errorf("cannot parse the connection string: %s (the string is not shown: it may hold a password)", why)
		}
		return "", errors.New("cannot parse the connection string (not shown: it may hold a password)")
	}
	host := pc.Host
	if strings.HasPrefix(host, "/") {
		host = "socket " + host
	}
	return fmt.Sprintf("host=%s port=%d db=%s user=%s", host, pc.Port, pc.Database, pc.User), nil
}

// dsnProblem is what pgconn found wrong with dsn (err is its parse error):
// its message without the connection string, which it quotes, or "" when
// there is none or it might still show the password.
func dsnProblem(dsn string, err error) string {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return ""
	}
	bare := *pe
	bare.ConnString = ""
	why, ok := strings.CutPrefix(bare.Error(), "cannot parse ``: ")
	if !ok {
		return ""
	}
	for _, m := range dsnPasswordRe.FindAllStringSubmatch(dsn, -1) {
		for _, pw := range m[1:] {
			if pw = strings.Trim(pw, "'"); pw != "" && strings.Contains(why, pw) {
				return ""
			}
		}
	}
	if m := dsnSchemeRe.FindStringSubmatch(dsn); m != nil && m[1] != "postgres" && m[1] != "postgresql" {
		why += "; a URL must start with postgres:// or postgresql://"
	}
	return why
}

// dsnSchemeRe finds a URL scheme in a DSN.
var dsnSchemeRe = regexp.MustCompile(`(?:^|\s)([A-Za-z][A-Za-z0-9+.-]*)://`)

// dsnPasswordRe finds what may be a password in a DSN: a URL's userinfo
// password, a password= or sslpassword= value.
var dsnPasswordRe = regexp.MustCompile(`://[^:/@]*:([^@]*)@|password=('[^']*'?|[^ &]*)`)

// checkDSNs refuses connection strings pgx cannot parse as bad config
// (exit 2), before any connect could quote them (with their password) in
// an error.
func checkDSNs(cfg *config.Config) error {
	if _, err := dsnLabel(cfg.Source.DSN); err != nil {
		return &UsageError{Err: fmt.Errorf("%s: source.dsn: %w", dsnWhere(cfg, cfg.Source.DSNPos), err)}
	}
	if _, err := dsnLabel(cfg.Store.DSN); err != nil {
		return &UsageError{Err: fmt.Errorf("%s: store.dsn: %w", dsnWhere(cfg, cfg.Store.DSNPos), err)}
	}
	return nil
}

// dsnWhere is "file:line:col" of a DSN's value, or the file alone.
func dsnWhere(cfg *config.Config, pos config.Pos) string {
	if pos.Line == 0 {
		return cfg.File
	}
	return pos.String()
}

// checkSource runs every check on the source database.
func (c *checker) checkSource(ctx context.Context) {
	conn, err := pgx.Connect(ctx, c.cfg.Source.DSN)
	if err != nil {
		c.fail("connect", "check source.dsn, the server and pg_hba.conf", "cannot connect to the source: %s", oneLine(err))
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	c.sourceOK = true
	if err := c.checkServer(ctx, conn); err != nil {
		c.fail("query", "", "%v", err)
	}
	steps := []func(context.Context, *pgx.Conn) error{
		c.checkRole, c.checkCapacity, c.checkTables, c.checkPublication, c.checkSlot, c.checkOpenTransactions,
	}
	if c.standby {
		// Slots, WAL senders and the publication are the primary's to
		// check: a standby's would mislead ("slot does not exist — fix:
		// walhook setup", which cannot create it there).
		steps = []func(context.Context, *pgx.Conn) error{c.checkRole, c.checkTables}
	}
	for _, step := range steps {
		if err := step(ctx, conn); err != nil {
			c.fail("query", "", "%v", err)
		}
	}
}

func (c *checker) checkServer(ctx context.Context, conn *pgx.Conn) error {
	var version, walLevel string
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('wal_level'), pg_is_in_recovery()`).
		Scan(&version, &walLevel, &c.standby); err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}
	if c.standby {
		c.fail("server", cdc.StandbyFix, "PostgreSQL %s is a standby (in recovery): %s", version, cdc.StandbyWhy)
	} else {
		c.ok("server", "PostgreSQL %s", version)
	}
	if walLevel == "logical" {
		c.ok("wal_level", "logical")
	} else {
		c.fail("wal_level", "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
			"is %s; logical decoding needs logical", walLevel)
	}
	return nil
}

func (c *checker) checkRole(ctx context.Context, conn *pgx.Conn) error {
	// Amazon RDS and Aurora grant replication through membership in
	// their rds_replication role, not the REPLICATION attribute.
	var repl, rds bool
	if err := conn.QueryRow(ctx, `SELECT current_user, rolsuper, rolreplication,
		       coalesce((SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = 'rds_replication'), false)
		FROM pg_roles WHERE rolname = current_user`).
		Scan(&c.user, &c.superuser, &repl, &rds); err != nil {
		return fmt.Errorf("read role: %w", err)
	}
	switch {
	case c.superuser:
		c.ok("role", "%s is a superuser", c.user)
	case repl:
		c.ok("role", "%s has REPLICATION", c.user)
	case rds:
		c.ok("role", "%s is a member of rds_replication (Amazon RDS and Aurora grant replication through it)", c.user)
	default:
		c.fail("role", fmt.Sprintf("ALTER ROLE %s REPLICATION; (as a superuser)", sqlIdent(c.user)),
			"%s has neither REPLICATION nor superuser, so it cannot create or read a replication slot", c.user)
	}
	return nil
}

// checkCapacity: a slot that does not exist yet needs a free one, and the
// stream needs a free WAL sender.
func (c *checker) checkCapacity(ctx context.Context, conn *pgx.Conn) error {
	var maxSlots, usedSlots, maxSenders, usedSenders int
	var exists, streaming bool
	err := conn.QueryRow(ctx, `
		SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)::int,
		       current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int,
		       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
		       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)`, c.cfg.Source.Slot).
		Scan(&maxSlots, &usedSlots, &maxSenders, &usedSenders, &exists, &streaming)
	if err != nil {
		return fmt.Errorf("read replication capacity: %w", err)
	}
	switch {
	case exists:
		c.ok("max_replication_slots", "slot %s exists (%d of %d slots in use)", c.cfg.Source.Slot, usedSlots, maxSlots)
	case usedSlots >= maxSlots:
		c.fail("max_replication_slots",
			fmt.Sprintf("ALTER SYSTEM SET max_replication_slots = %d; then restart PostgreSQL (or drop an unused slot: SELECT pg_drop_replication_slot('name');)", usedSlots+1),
			"all %d replication slots are in use and slot %s does not exist yet", maxSlots, c.cfg.Source.Slot)
	default:
		c.ok("max_replication_slots", "%d of %d slots in use; one free for %s", usedSlots, maxSlots, c.cfg.Source.Slot)
	}
	if maxSenders == 0 {
		c.fail("max_wal_senders", "ALTER SYSTEM SET max_wal_senders = 10; then restart PostgreSQL",
			"is 0: no replication connection is possible")
	} else if streaming {
		// A walhook (or a dry run) streams the slot: the sender walhook
		// needs is one of those in use, and a run that takes over from it
		// gets the one it leaves.
		c.ok("max_wal_senders", "%d of %d in use, one of them streaming slot %s", usedSenders, maxSenders, c.cfg.Source.Slot)
	} else if usedSenders >= maxSenders {
		c.fail("max_wal_senders",
			fmt.Sprintf("ALTER SYSTEM SET max_wal_senders = %d; then restart PostgreSQL", usedSenders+1),
			"all %d WAL senders are in use", maxSenders)
	} else {
		c.ok("max_wal_senders", "%d of %d in use", usedSenders, maxSenders)
	}
	return nil
}

// tableFacts are the privileges check needs on one rule table.
type tableFacts struct {
	schemaUsage, selectPriv, owner bool
	ownerName                      string
	unlogged                       bool // relpersistence 'u': writes no WAL
}

// checkNotTables names rule "tables" that exist as another kind of
// relation, which the rule check can only call missing: logical
// replication publishes tables, and a view, a materialized view or a
// foreign table has no changes of its own in the WAL.
func (c *checker) checkNotTables(ctx context.Context, conn *pgx.Conn) error {
	var missing []string
	for _, t := range c.tables {
		if _, ok := c.schema[t]; !ok {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	schemas := make([]string, len(missing))
	names := make([]string, len(missing))
	for i, t := range missing {
		schemas[i], names[i] = splitQualified(t)
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname || '.' || c.relname, CASE c.relkind WHEN 'v' THEN 'a view' WHEN 'm' THEN 'a materialized view'
		                                           WHEN 'f' THEN 'a foreign table' ELSE 'a ' || c.relkind::text END
		FROM unnest($1::text[], $2::text[]) AS want(schema, name)
		JOIN pg_namespace n ON n.nspname = want.schema
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = want.name
		WHERE c.relkind IN ('v', 'm', 'f')`, schemas, names)
	if err != nil {
		return fmt.Errorf("read relation kinds: %w", err)
	}
	var t, kind string
	_, err = pgx.ForEachRow(rows, []any{&t, &kind}, func() error {
		c.fail("table "+t, "map the table(s) it reads from", "is %s: logical replication publishes tables only, and no change of it would arrive", kind)
		return nil
	})
	return wrapErr("read relation kinds", err)
}

// unloggedProblem says why an UNLOGGED rule table cannot work, for a line
// followed by unloggedFix.
const unloggedProblem = "is UNLOGGED: it writes no WAL, so logical replication never sees its changes (and PostgreSQL refuses to publish it)"

func unloggedFix(t string) string {
	return fmt.Sprintf("ALTER TABLE %s SET LOGGED; (or map another table)", sqlTable(t))
}

func (c *checker) checkTables(ctx context.Context, conn *pgx.Conn) error {
	schema, parts, err := readSourceSchema(ctx, conn, c.tables)
	if err != nil {
		return err
	}
	c.schema, c.parts = schema, parts
	facts, err := readTableFacts(ctx, conn, c.tables)
	if err != nil {
		return err
	}
	unlogged, err := readUnlogged(ctx, conn, c.tables)
	if err != nil {
		return err
	}
	c.owned = make(map[string]bool, len(facts))
	for _, t := range c.tables {
		ts, ok := schema[t]
		f, okf := facts[t]
		if !ok || !okf {
			continue // reported with its rule below
		}
		c.owned[t] = f.owner
		s, _ := splitQualified(t)
		switch {
		case f.unlogged:
			c.fail("table "+t, unloggedFix(t), "%s", unloggedProblem)
		case len(unlogged[t]) > 0:
			var fix []string
			for _, u := range unlogged[t] {
				fix = append(fix, fmt.Sprintf("ALTER TABLE %s SET LOGGED;", sqlTable(u)))
			}
			if len(unlogged[t]) == 1 {
				c.fail("table "+t, strings.Join(fix, " "), "partition %s is UNLOGGED: it writes no WAL, so logical replication "+
					"never sees its changes (and PostgreSQL lets a partition be so while the partitioned table is published)", unlogged[t][0])
			} else {
				c.fail("table "+t, strings.Join(fix, " "), "partitions %s are UNLOGGED: they write no WAL, so logical replication "+
					"never sees their changes (and PostgreSQL lets a partition be so while the partitioned table is published)", strings.Join(unlogged[t], ", "))
			}
		case !f.schemaUsage:
			c.fail("table "+t, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s; GRANT SELECT ON %s TO %s;", sqlIdent(s), sqlIdent(c.user), sqlTable(t), sqlIdent(c.user)),
				"%s has no USAGE on schema %s", c.user, s)
		case !f.selectPriv:
			c.fail("table "+t, fmt.Sprintf("GRANT SELECT ON %s TO %s;", sqlTable(t), sqlIdent(c.user)),
				"%s has no SELECT privilege", c.user)
		case !hasIdentity(ts):
			c.fail("table "+t, identityFix(t, parts),
				"REPLICA IDENTITY %s without key columns: once published, every UPDATE and DELETE on it fails", replicaIdentityName(ts.ReplicaIdentity))
		default:
			c.ok("table "+t, "readable, %d columns, %s", len(ts.Columns), identityDesc(ts, parts[t]))
		}
	}
	foreign, err := readForeignPartitions(ctx, conn, c.tables)
	if err != nil {
		return err
	}
	for _, t := range c.tables {
		if len(foreign[t]) > 0 {
			c.warn("table "+t, "make them local partitions if rows reach them, or run a walhook on the server that holds their rows",
				"partitions %s are foreign tables: the rows routed to them are written on another server, so no change of them "+
					"is in this server's WAL and no event of them is made", strings.Join(foreign[t], ", "))
		}
	}
	if err := c.checkNotTables(ctx, conn); err != nil {
		return err
	}
	if err := c.checkLargeValues(ctx, conn); err != nil {
		return err
	}
	needs, err := ruleSchemaErrors(c.cfg, c.m, schema, parts)
	for _, e := range needs {
		fix := e.fix
		if e.table != "" && !c.owned[e.table] && fix != "" {
			fix += " (as the owner of " + e.table + ", or a superuser)"
		}
		c.fail("rule", fix, "%s", e.message(parts))
	}
	if err == nil && len(needs) == 0 {
		c.ok("rules", "every rule's table and columns exist, and old values are sent where rules read them")
	}
	for _, w := range c.m.UnsentDefaults(schema) {
		c.warn("rule", "", "%s", w)
	}
	return err
}

// checkLargeValues warns about tables without REPLICA IDENTITY FULL whose
// update rules read a column that can be stored out of line (TOAST): an
// update that leaves such a value unchanged does not carry it, and the
// event that needs it is skipped (logged and counted), not sent.
func (c *checker) checkLargeValues(ctx context.Context, conn *pgx.Conn) error {
	risky, err := largeValueRisks(ctx, conn, c.m, c.schema, c.tables)
	if err != nil {
		return err
	}
	for _, t := range c.tables {
		if cols := risky[t]; len(cols) > 0 {
			c.warn("large values "+t, identityFix(t, c.parts)+", unless these values stay under ~2 kB",
				"update rules read %s, which PostgreSQL stores out of line when large and, without REPLICA IDENTITY FULL, does not send when an update leaves them unchanged: such an event is skipped (logged, walhook_events_skipped_unavailable_total)%s",
				strings.Join(cols, ", "), partitionNote(c.parts[t]))
		}
	}
	return nil
}

// largeValueRisks returns, per rule table without REPLICA IDENTITY FULL,
// the columns its update rules read (all of them for a rule that sends
// or reads the whole row) that can be TOASTed (attstorage other than
// plain), key columns aside.
func largeValueRisks(ctx context.Context, conn *pgx.Conn, m *mapper.Mapper, schema map[string]mapper.TableSchema, tables []string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, t := range tables {
		ts, ok := schema[t]
		if !ok || ts.ReplicaIdentity == 'f' {
			continue
		}
		cols, whole := m.UpdateReads(t)
		if len(cols) == 0 && !whole {
			continue
		}
		s, n := splitQualified(t)
		rows, err := conn.Query(ctx, `
			SELECT a.attname::text FROM pg_attribute a
			JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace ns ON ns.oid = c.relnamespace
			WHERE ns.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
			  AND a.attstorage <> 'p' AND a.attgenerated = ''
			ORDER BY a.attnum`, s, n)
		if err != nil {
			return nil, fmt.Errorf("read column storage of %s: %w", t, err)
		}
		toastable, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read column storage of %s: %w", t, err)
		}
		for _, col := range toastable {
			if (whole || slices.Contains(cols, col)) && !slices.Contains(ts.Keys, col) {
				out[t] = append(out[t], col)
			}
		}
	}
	return out, nil
}

// hasIdentity: PostgreSQL refuses UPDATE and DELETE on a table that a
// publication publishes them for when the table has no replica identity
// (DEFAULT without a primary key, NOTHING, or an index that was dropped).
func hasIdentity(ts mapper.TableSchema) bool {
	return ts.ReplicaIdentity == 'f' || len(ts.Keys) > 0
}

// tablesWithoutIdentity lists the rule tables setup must not publish
// without REPLICA IDENTITY FULL.
func tablesWithoutIdentity(schema map[string]mapper.TableSchema, tables []string) []string {
	var out []string
	for _, t := range tables {
		if ts, ok := schema[t]; ok && !hasIdentity(ts) {
			out = append(out, t)
		}
	}
	return out
}

// identityFix is the fix for rule table t, whose REPLICA IDENTITY does
// not send the old values rules read: FULL on it or, when partitioned, on
// it and each leaf partition that lacks it.
func identityFix(t string, parts map[string]*partitionIdentity) string {
	tables := []string{t}
	if p := parts[t]; p != nil && len(p.toAlter(t)) > 0 {
		tables = p.toAlter(t)
	}
	stmts := make([]string, len(tables))
	for i, x := range tables {
		stmts[i] = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", sqlTable(x))
	}
	return strings.Join(stmts, " ") + " (or walhook setup --replica-identity)"
}

// partitionNote names the leaf partitions of a partitioned table that are
// not REPLICA IDENTITY FULL, for a line saying old values are missing.
func partitionNote(p *partitionIdentity) string {
	if p == nil || len(p.notFull) == 0 {
		return ""
	}
	return fmt.Sprintf(" (its partitions %s: PostgreSQL sends a partitioned table's old rows as the partition the row is in has its REPLICA IDENTITY, "+
		"and partitions, also those created or attached later, do not take the partitioned table's)", leafList(p))
}

// leafList renders p's leaf partitions without FULL with their identity.
func leafList(p *partitionIdentity) string {
	l := make([]string, len(p.notFull))
	for i, t := range p.notFull {
		l[i] = t + " " + replicaIdentityName(p.ident[t])
	}
	return strings.Join(l, ", ")
}

// identityDesc describes a rule table's replica identity for its ok line;
// for a partitioned table, its partitions' too.
func identityDesc(ts mapper.TableSchema, p *partitionIdentity) string {
	if p == nil || p.leaves == 0 {
		return "REPLICA IDENTITY " + replicaIdentityName(ts.ReplicaIdentity) + keyNote(ts)
	}
	own := "REPLICA IDENTITY " + replicaIdentityName(p.own)
	switch {
	case ts.ReplicaIdentity == 'f':
		return fmt.Sprintf("%s, as are its %s", own, plural(p.leaves, "partition"))
	case len(p.notFull) == 0:
		return fmt.Sprintf("%s; its %s are FULL%s", own, plural(p.leaves, "partition"), keyNote(ts))
	}
	return fmt.Sprintf("%s; partitions not FULL: %s%s", own, leafList(p), keyNote(ts))
}

func keyNote(ts mapper.TableSchema) string {
	if ts.ReplicaIdentity == 'f' || len(ts.Keys) == 0 {
		return ""
	}
	return " (old key: " + strings.Join(ts.Keys, ", ") + ")"
}

func replicaIdentityName(b byte) string {
	switch b {
	case 'd':
		return "DEFAULT"
	case 'f':
		return "FULL"
	case 'i':
		return "USING INDEX"
	case 'n':
		return "NOTHING"
	}
	return "unknown"
}

// schemaProblem is one rule that does not fit the live schema.
type schemaProblem struct {
	err   error
	table string // set for old-value problems: the table to ALTER
	fix   string
}

// message is p's error for a line followed by p.fix: an old-value
// problem's mapper message ends with a fix of its own, which gives way to
// the partitions' note.
func (p schemaProblem) message(parts map[string]*partitionIdentity) string {
	msg := p.err.Error()
	if p.table != "" {
		msg, _, _ = strings.Cut(msg, "; run: ALTER TABLE")
		msg += partitionNote(parts[p.table])
	}
	return msg
}

// ruleSchemaErrors runs mapper.CheckSchema and returns each rule error with
// its fix; the tables whose rules need REPLICA IDENTITY FULL have table set.
func ruleSchemaErrors(cfg *config.Config, m *mapper.Mapper, schema map[string]mapper.TableSchema, parts map[string]*partitionIdentity) ([]schemaProblem, error) {
	err := m.CheckSchema(schema)
	if err == nil {
		return nil, nil
	}
	tableOf := make(map[string]string) // rule Where → qualified table
	for _, r := range mapperRules(cfg) {
		s, t := splitQualified(r.Table)
		tableOf[r.Where] = s + "." + t
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var out []schemaProblem
	for _, e := range errs {
		p := schemaProblem{err: e}
		var re *mapper.RuleError
		switch {
		case errors.Is(e, mapper.ErrNeedsOldValues) && errors.As(e, &re):
			p.table = tableOf[re.Where]
			p.fix = identityFix(p.table, parts)
		case errors.Is(e, mapper.ErrUnknownTable):
			p.fix = "create the table, or correct the rule's table"
		case errors.Is(e, mapper.ErrGeneratedColumn):
			p.fix = "read the columns it is computed from, or correct the rule"
		case errors.Is(e, mapper.ErrUnknownColumn):
			p.fix = "add the column, or correct the rule"
		}
		out = append(out, p)
	}
	return out, nil
}

func readTableFacts(ctx context.Context, conn *pgx.Conn, tables []string) (map[string]tableFacts, error) {
	schemas := make([]string, len(tables))
	names := make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = splitQualified(t)
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname || '.' || c.relname, has_schema_privilege(n.oid, 'USAGE'),
		       has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'),
		       pg_get_userbyid(c.relowner), c.relpersistence = 'u'
		FROM unnest($1::text[], $2::text[]) AS want(schema, name)
		JOIN pg_namespace n ON n.nspname = want.schema
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = want.name
		WHERE c.relkind IN ('r', 'p')`, schemas, names)
	if err != nil {
		return nil, fmt.Errorf("read table privileges: %w", err)
	}
	defer rows.Close()
	out := make(map[string]tableFacts)
	for rows.Next() {
		var t string
		var f tableFacts
		if err := rows.Scan(&t, &f.schemaUsage, &f.selectPriv, &f.owner, &f.ownerName, &f.unlogged); err != nil {
			return nil, fmt.Errorf("read table privileges: %w", err)
		}
		out[t] = f
	}
	return out, rows.Err()
}

// checkPublication: present and publishing exactly what the rules need,
// never the store; when absent, whether setup will be allowed to create it.
func (c *checker) checkPublication(ctx context.Context, conn *pgx.Conn) error {
	pub := c.cfg.Source.Publication
	what := "publication " + pub
	var exists, allTables bool
	err := conn.QueryRow(ctx, `
		SELECT count(*) > 0, coalesce(bool_or(puballtables), false)
		FROM pg_publication WHERE pubname = $1`, pub).Scan(&exists, &allTables)
	if err != nil {
		return fmt.Errorf("read publication: %w", err)
	}
	if !exists {
		// Said after the create line is known: setup fixes it only when
		// it may create the publication.
		at := len(c.lines)
		canCreate, err := c.checkCanCreatePublication(ctx, conn)
		if err != nil {
			return err
		}
		line := checkLine{status: statusFail, what: what, msg: "does not exist", fix: "walhook setup", setupFixes: true}
		if !canCreate {
			line = checkLine{status: statusFail, what: what, msg: "does not exist, and this role may not create it",
				fix: "what the create publication line says (then walhook setup)"}
		}
		c.lines = slices.Insert(c.lines, at, line)
		return c.checkPartitionRules(ctx, conn)
	}
	if allTables {
		c.fail(what, fmt.Sprintf("DROP PUBLICATION %s; then walhook setup (or choose another source.publication)", sqlIdent(pub)),
			"is FOR ALL TABLES: "+cdc.AllTablesWhy)
		return nil
	}
	facts, err := readPublication(ctx, conn, pub, c.tables)
	if err != nil {
		return err
	}
	have := facts.listed
	var missing, store, extra []string
	var unusable []publicationProblem
	for _, p := range facts.problems(c.tables) {
		if p.missing {
			missing = append(missing, p.table)
		} else {
			unusable = append(unusable, p)
		}
	}
	for _, t := range have {
		s, _ := splitQualified(t)
		switch {
		case slices.Contains(c.tables, t):
		case slices.ContainsFunc(facts.ancestors[t], func(a string) bool { return slices.Contains(c.tables, a) }):
			// A partition of a rule table: reported with it above.
		case s == c.cfg.Store.Schema && c.cfg.Store.DSN == c.cfg.Source.DSN:
			store = append(store, t)
		default:
			extra = append(extra, t)
		}
	}
	ops := facts.unpublished(ruleOperations(c.cfg))
	// For a publication another role owns, setup changes nothing: the
	// fix is the statement its owner runs, the one setup would.
	setTable := fmt.Sprintf("have %s (or a superuser) run ALTER PUBLICATION %s SET TABLE %s;",
		facts.owner, sqlIdent(pub), sqlTables(c.tables))
	ok := true
	if len(missing) > 0 {
		ok = false
		if facts.mine {
			c.failSetup(what, "does not publish %s", strings.Join(missing, ", "))
		} else {
			c.fail(what, setTable, "does not publish %s", strings.Join(missing, ", "))
		}
	}
	for _, p := range unusable {
		ok = false
		if p.setupFixes {
			c.failSetup(what, "%s", p.msg)
		} else {
			c.fail(what, p.fix, "%s", p.msg)
		}
	}
	if len(store) > 0 {
		ok = false
		if facts.mine {
			c.failSetup(what, "publishes walhook's own store tables %s", strings.Join(store, ", "))
		} else {
			c.fail(what, setTable, "publishes walhook's own store tables %s", strings.Join(store, ", "))
		}
	}
	if len(ops) > 0 {
		ok = false
		if facts.mine {
			c.failSetup(what, "does not publish %s, which rules map", strings.Join(ops, ", "))
		} else {
			c.fail(what, facts.publishFix(), "does not publish %s, which rules map", strings.Join(ops, ", "))
		}
	}
	if len(extra) > 0 {
		if facts.mine {
			c.warn(what, "", "also publishes %s, which no rule maps (decoded and ignored; walhook setup removes them)", strings.Join(extra, ", "))
		} else {
			c.warn(what, setTable, "also publishes %s, which no rule maps (decoded and ignored)", strings.Join(extra, ", "))
		}
	}
	if ok {
		c.ok(what, "publishes the %d rule tables", len(c.tables))
	}
	return nil
}

// checkPartitionRules reports, before the publication exists, the rule
// tables that are partitions of another rule table: setup publishes via
// the root and refuses them, since their changes would arrive under the
// root's name and their rules never fire. (With the publication there,
// checkPublication's problems say it.)
func (c *checker) checkPartitionRules(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `
		SELECT t, an.nspname || '.' || ac.relname
		FROM unnest($1::text[]) AS t
		-- By the catalogs, not to_regclass: that needs USAGE on the
		-- schema, whose lack the table lines report with their fix.
		JOIN pg_namespace tn ON tn.nspname = split_part(t, '.', 1)
		JOIN pg_class tc ON tc.relnamespace = tn.oid AND tc.relname = split_part(t, '.', 2)
		CROSS JOIN LATERAL pg_partition_ancestors(tc.oid) AS a(relid)
		JOIN pg_class ac ON ac.oid = a.relid JOIN pg_namespace an ON an.oid = ac.relnamespace
		WHERE an.nspname || '.' || ac.relname <> t ORDER BY 1, 2`, c.tables)
	if err != nil {
		return fmt.Errorf("read partition ancestors: %w", err)
	}
	type pair struct{ Part, Root string }
	pairs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[pair])
	if err != nil {
		return fmt.Errorf("read partition ancestors: %w", err)
	}
	done := map[string]bool{}
	for _, p := range pairs {
		if done[p.Part] || !slices.Contains(c.tables, p.Root) {
			continue
		}
		done[p.Part] = true
		c.fail("table "+p.Part, fmt.Sprintf("write the rules of %s on %s (a when: on the partition key selects its rows)", p.Part, p.Root),
			"is a partition of %s, which the rules map too: walhook publishes it via its root (publish_via_partition_root), "+
				"so its changes arrive as %s, rules on %s never fire, and walhook setup refuses them", p.Root, p.Root, p.Part)
	}
	return nil
}

// checkCanCreatePublication reports whether `walhook setup` may create the
// publication: CREATE PUBLICATION needs CREATE on the database and, for
// FOR TABLE, ownership of every table (superusers need neither).
func (c *checker) checkCanCreatePublication(ctx context.Context, conn *pgx.Conn) (bool, error) {
	if c.superuser {
		return true, nil
	}
	var db string
	var create bool
	if err := conn.QueryRow(ctx, `SELECT current_database(), has_database_privilege(current_database(), 'CREATE')`).
		Scan(&db, &create); err != nil {
		return false, fmt.Errorf("read database privileges: %w", err)
	}
	var notOwned []string
	for _, t := range c.tables {
		if owned, known := c.owned[t]; known && !owned {
			notOwned = append(notOwned, t)
		}
	}
	var quoted []string
	for _, t := range c.tables {
		quoted = append(quoted, sqlTable(t))
	}
	// As setup would create it: via the root, so that a partitioned
	// table's changes arrive under its own name.
	stmt := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true);",
		sqlIdent(c.cfg.Source.Publication), strings.Join(quoted, ", "))
	switch {
	case !create && len(notOwned) > 0:
		c.fail("create publication", "as a superuser or the tables' owner run: "+stmt,
			"%s has no CREATE on database %s and does not own %s", c.user, db, strings.Join(notOwned, ", "))
	case !create:
		c.fail("create publication", fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s; (or run as a superuser: %s)", sqlIdent(db), sqlIdent(c.user), stmt),
			"%s has no CREATE on database %s", c.user, db)
	case len(notOwned) > 0:
		c.fail("create publication", "as a superuser or the tables' owner run: "+stmt,
			"%s does not own %s (a publication FOR TABLE needs ownership)", c.user, strings.Join(notOwned, ", "))
	default:
		c.ok("create publication", "%s may create it (CREATE on %s, owns the tables)", c.user, db)
		return true, nil
	}
	return false, nil
}

func (c *checker) checkSlot(ctx context.Context, conn *pgx.Conn) error {
	slot := c.cfg.Source.Slot
	what := "slot " + slot
	var plugin, db, walStatus *string
	var sameDB, temporary, active bool
	var pid *int32
	var retained *int64
	err := conn.QueryRow(ctx, `
		SELECT plugin, database, database = current_database(), temporary, active, active_pid, wal_status,
		       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 END
		FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&plugin, &db, &sameDB, &temporary, &active, &pid, &walStatus, &retained)
	if errors.Is(err, pgx.ErrNoRows) {
		c.failSetup(what, "does not exist")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read replication slot: %w", err)
	}
	drop := fmt.Sprintf("choose another source.slot, or drop it: SELECT pg_drop_replication_slot('%s');", slot)
	ws := derefStr(walStatus)
	switch {
	case plugin == nil:
		c.fail(what, drop, "is a physical slot")
		return nil
	case !sameDB:
		c.fail(what, drop, "belongs to database %s", derefStr(db))
		return nil
	case *plugin != "pgoutput":
		c.fail(what, drop, "uses plugin %s; walhook needs pgoutput", *plugin)
		return nil
	case temporary:
		c.fail(what, drop, "is temporary; walhook needs a permanent slot")
		return nil
	case ws == "lost":
		c.fail(what, "walhook teardown && walhook setup --accept-gap (the changes in between are gone: backfill what matters)",
			"is invalidated (wal_status lost): PostgreSQL removed WAL it had not confirmed")
		return nil
	}
	retains := ""
	if retained != nil {
		retains = fmt.Sprintf(", retains %d bytes of WAL", *retained)
	}
	switch {
	case ws == "unreserved":
		c.warn(what, "start walhook run now; consider raising max_slot_wal_keep_size",
			"wal_status unreserved: close to max_slot_wal_keep_size, it may be invalidated soon%s", retains)
	case active:
		c.warn(what, "", "held by the server process with PID %d (the walsender of another walhook?); a new walhook run waits for it%s", derefPID(pid), retains)
	default:
		c.ok(what, "pgoutput, wal_status %s%s%s", ws, retains, slotBacklog(ctx, c.cfg))
	}
	return nil
}

// slotBacklog says whether changes of the published tables committed
// after the slot's confirmed position wait for walhook run, for a slot
// no process holds: with the application's writes stopped and walhook
// stopped, "nothing waits" is what tells that walhook has read all a
// database will ever write before it moves (pg_upgrade, a restore).
// pg_logical_slot_peek_binary_changes decodes with pgoutput, as run does,
// without moving the slot; pgoutput skips transactions that change no
// published table, so walhook's own store in the source does not count.
// It decodes from the slot's restart_lsn, so it is bounded in time; a
// peek that fails or times out says nothing.
func slotBacklog(ctx context.Context, cfg *config.Config) string {
	conn, err := pgx.Connect(ctx, cfg.Source.DSN)
	if err != nil {
		return ""
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SET statement_timeout = '20s'`); err != nil {
		return ""
	}
	const most = 1000
	// upto_nchanges counts every row decoded, Begin, Commit and Relation
	// messages too, and PostgreSQL 14 sends a Begin and Commit for every
	// transaction, published tables or not: a peek stopped there (rows >=
	// most) has not seen the rest, and saying "caught up" after a
	// thousand rows of other tables' transactions would send an operator
	// into a move with changes still waiting.
	var n, rows int
	var at string
	err = conn.QueryRow(ctx, `SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1),
		count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68, 84)), -- pgoutput's Insert, Update, Delete, Truncate
		count(*)
		FROM pg_logical_slot_peek_binary_changes($1, NULL, $3, 'proto_version', '1', 'publication_names', $2)`,
		cfg.Source.Slot, sqlIdent(cfg.Source.Publication), most).Scan(&at, &n, &rows)
	switch {
	case err != nil:
		return ""
	case n == 0 && rows >= most:
		return ""
	case n == 0:
		return fmt.Sprintf("; caught up: no change of the published tables after its position %s waits for walhook run", at)
	case n >= most || rows >= most:
		return fmt.Sprintf("; %d or more changes of the published tables after its position %s wait for walhook run", most, at)
	}
	return fmt.Sprintf("; %d changes of the published tables after its position %s wait for walhook run", n, at)
}

// openTransactionAge is how old a prepared transaction, or a session's
// transaction with a transaction id, is when check warns about it and a
// running walhook logs it.
var openTransactionAge = 5 * time.Minute

// openTransactionProblem says what an old open transaction does, after
// its line of cdc.OpenTransactions.
const openTransactionProblem = "keeps the WAL every logical slot retains from before its start, whatever walhook confirms " +
	"(walhook_slot_retained_wal_bytes grows), and a new slot's creation (walhook setup) waits for it to end"

// checkOpenTransactions warns about every prepared transaction and
// session's transaction older than openTransactionAge: a forgotten
// PREPARE TRANSACTION lasts until COMMIT PREPARED or ROLLBACK PREPARED,
// across restarts, and holds the slot's WAL all that time.
func (c *checker) checkOpenTransactions(ctx context.Context, conn *pgx.Conn) error {
	open, err := cdc.OpenTransactions(ctx, conn, conn.PgConn().PID(), time.Now().Add(-openTransactionAge))
	if err != nil {
		return fmt.Errorf("read open transactions: %w", err)
	}
	for _, l := range open {
		msg, fix, _ := strings.Cut(l, " — fix: ")
		c.warn("open transaction", fix, "%s is older than %s: it %s", msg, openTransactionAge, openTransactionProblem)
	}
	return nil
}

func derefStr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefPID(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

// checkStore reports the store schema's version against this binary's.
func (c *checker) checkStore(ctx context.Context) {
	schema := c.cfg.Store.Schema
	what := "store schema " + schema
	pool, err := connectStore(ctx, c.cfg.Store.DSN)
	if err != nil {
		c.fail("store", "check store.dsn (or source.dsn), the server and pg_hba.conf", "%s", oneLine(err))
		return
	}
	defer pool.Close()
	if err := storeWritable(ctx, pool); err != nil {
		// Not "fix: walhook setup": setup cannot write there either.
		fix := "check store.dsn (or source.dsn), the server and pg_hba.conf"
		if errors.Is(err, errStoreReadOnly) {
			fix = storeReadOnlyFixFor(c.cfg)
		}
		c.fail("store", fix, "%s", oneLine(err))
		return
	}
	err = dispatch.CheckSchema(ctx, pool, schema)
	var se *dispatch.SchemaError
	switch {
	case err == nil:
		var shared *dispatch.SharedStoreError
		if err := dispatch.RefuseSharedStore(ctx, pool, schema, c.cfg.Source.Slot); errors.As(err, &shared) {
			c.fail(what, shared.Fix(), "holds the cursor of slot %s too: %s", strings.Join(shared.Others, ", "), shared.Why())
			return
		} else if err != nil {
			c.fail(what, "", "%v", err)
			return
		}
		c.ok(what, "at version %d", dispatch.LatestSchemaVersion())
		c.checkCursor(ctx)
	case errors.Is(err, dispatch.ErrSchemaMissing):
		c.checkCanCreateSchema(ctx, pool, what)
	case errors.Is(err, dispatch.ErrSchemaOld) && errors.As(err, &se):
		c.failSetup(what, "at version %d, this walhook needs %d", se.Have, se.Want)
	case errors.Is(err, dispatch.ErrSchemaTooNew) && errors.As(err, &se):
		c.fail(what, "upgrade walhook", "at version %d, newer than this walhook (%d)", se.Have, se.Want)
	case errors.Is(err, dispatch.ErrSchemaVersions):
		c.fail(what, fmt.Sprintf("in %s.schema_version keep the rows of the migrations whose changes the schema holds "+
			"(docs/operations.md, Upgrading, says what each adds) and delete the others, then walhook setup", sqlIdent(schema)),
			"%s", strings.TrimPrefix(err.Error(), fmt.Sprintf("schema %q: ", schema)))
	default:
		c.fail(what, storeGrantFix(ctx, pool, c.cfg.Store.DSN, schema), "cannot read its version: %v", err)
	}
}

// storeGrantFix is the fix for a store schema another role made (setup run
// as a superuser, say): what run does with the store (claim, record,
// fan out, the attempts' ids) takes these grants, given by the schema's
// owner, who then also runs the setup that migrates it.
func storeGrantFix(ctx context.Context, pool *pgxpool.Pool, dsn, schema string) string {
	role, owner := "<role>", "its owner"
	if pc, err := pgx.ParseConfig(dsn); err == nil && pc.User != "" {
		role = sqlIdent(pc.User)
	}
	var o string
	if pool.QueryRow(ctx, `SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1`, schema).Scan(&o) == nil {
		owner = sqlIdent(o)
	}
	s := sqlIdent(schema)
	return fmt.Sprintf("as %s (or a superuser): GRANT USAGE ON SCHEMA %s TO %s; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %s TO %s; "+
		"GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO %s; (walhook setup, which migrates the store, then runs as %s)",
		owner, s, role, s, role, s, role, owner)
}

// checkCursor reports a store cursor behind the slot (a gap walhook run
// refuses to start with).
func (c *checker) checkCursor(ctx context.Context) {
	if !c.sourceOK || c.standby {
		return // reported by the source's lines
	}
	gap, err := readCursorGap(ctx, c.cfg)
	switch {
	case err != nil:
		c.fail("cursor", "", "cannot compare the store's cursor with the slot: %v", err)
	case gap != nil && gap.otherSystem != "":
		c.fail("cursor", otherSystemFix, "%s", gap)
	case gap != nil:
		c.fail("cursor", "walhook setup --accept-gap (backfill the changes in between if they matter)", "%s", gap)
	}
}

// checkCPUYield says whether cpu.yield would act in a walhook started as
// this check was (same user, capabilities, limits and priority). It only
// warns: walhook runs either way, at normal priority.
func (c *checker) checkCPUYield() {
	if !c.cfg.CPU.Yield {
		c.ok("cpu.yield", "off in the config")
		return
	}
	if err := cpuyield.Available(); err != nil {
		c.warn("cpu.yield", "to yield, start walhook at normal priority as root or with CAP_SYS_NICE (or LimitNICE=+0 in systemd, --ulimit nice=20:20 in docker); or set cpu.yield: false",
			"off for a walhook started like this check: %v", err)
		return
	}
	c.ok("cpu.yield", "on: a walhook started like this check may yield the CPU and take it back")
}

// checkCanCreateSchema reports the store that setup has yet to create
// (what names it) and whether it can: setup creates the store schema,
// which needs CREATE on the store database unless the schema exists
// already (a DBA may have created it for walhook, empty).
func (c *checker) checkCanCreateSchema(ctx context.Context, pool *pgxpool.Pool, what string) {
	var user, db string
	var create, exists, ownsOrCreate bool
	err := pool.QueryRow(ctx, `
		SELECT current_user, current_database(), has_database_privilege(current_database(), 'CREATE'),
		       EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
		       coalesce((SELECT has_schema_privilege(oid, 'CREATE') FROM pg_namespace WHERE nspname = $1), false)`,
		c.cfg.Store.Schema).Scan(&user, &db, &create, &exists, &ownsOrCreate)
	if exists {
		// Setup refuses a schema that holds an application's tables.
		if names, ferr := dispatch.ForeignRelations(ctx, pool, c.cfg.Store.Schema); ferr != nil || names != "" {
			if ferr != nil {
				c.fail("store", "", "%v", ferr)
				return
			}
			c.fail(what, dispatch.NotAStoreFix, "holds %s but no walhook schema_version (another application's schema, "+
				"or a store made in part by hand), so walhook setup refuses it", names)
			return
		}
		c.failSetup(what, "exists, but holds no walhook store yet (walhook needs version %d)", dispatch.LatestSchemaVersion())
	} else {
		c.failSetup(what, "does not exist (walhook needs version %d)", dispatch.LatestSchemaVersion())
	}
	if err != nil {
		c.fail("store", "", "read store privileges: %v", err)
		return
	}
	switch {
	case exists && !ownsOrCreate:
		c.fail("create store", fmt.Sprintf("GRANT CREATE, USAGE ON SCHEMA %s TO %s;", sqlIdent(c.cfg.Store.Schema), sqlIdent(user)),
			"%s cannot create tables in schema %s", user, c.cfg.Store.Schema)
	case !exists && !create:
		c.fail("create store", fmt.Sprintf("CREATE SCHEMA %s AUTHORIZATION %s; (or GRANT CREATE ON DATABASE %s TO %s;)",
			sqlIdent(c.cfg.Store.Schema), sqlIdent(user), sqlIdent(db), sqlIdent(user)),
			"%s has no CREATE on database %s", user, db)
	}
}

// connectStore opens a small pool on the store database.
func connectStore(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("cannot parse the store connection string")
	}
	pc.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to the store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to the store: %w", err)
	}
	return pool, nil
}

// oneLine renders a connection error on one line for check's report.
// pgconn reports every attempt of a connection on its own line; with the
// default sslmode=prefer against a server without TLS the first is always
// "tls error: server refused TLS connection", which reads like the cause
// when the real one (a password, a database, pg_hba.conf) is the next
// attempt's, so that line is left out when another one follows.
func oneLine(err error) string {
	lines := strings.Split(errorText(err), "\n")
	kept := lines[:0]
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || (strings.HasSuffix(l, "tls error: server refused TLS connection") && i < len(lines)-1) {
			continue
		}
		kept = append(kept, l)
	}
	return strings.ReplaceAll(strings.Join(kept, " "), ": ;", ":")
}

// sqlIdent quotes an SQL identifier only when it needs it, so printed fixes
// read naturally.
func sqlIdent(s string) string {
	plain := s != ""
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if !(ch >= 'a' && ch <= 'z' || ch == '_' || i > 0 && ch >= '0' && ch <= '9') {
			plain = false
			break
		}
	}
	if plain && !reservedWords[s] {
		return s
	}
	return pgx.Identifier{s}.Sanitize()
}

// reservedWords that cannot be left unquoted in the statements check prints.
var reservedWords = map[string]bool{
	"all": true, "user": true, "table": true, "select": true, "order": true, "group": true,
	"grant": true, "from": true, "where": true, "to": true, "check": true, "default": true,
}

// sqlTable renders "schema.table" for SQL.
func sqlTable(t string) string {
	s, n := splitQualified(t)
	return sqlIdent(s) + "." + sqlIdent(n)
}

// refusal is one reason run refuses a config that loaded, found without
// connecting anywhere. run and setup stop with every one of them before
// they change anything (setup would otherwise leave a slot keeping WAL for
// a config run will not start with); check lists each as a FAIL line.
type refusal struct {
	err       error  // as run and setup say it: where in the file, the setting, what is wrong
	what, fix string // check's subject and fix
	msg       string // check's text
}

// refusals are the reasons run refuses cfg, in file order.
func refusals(cfg *config.Config) []refusal {
	var rs []refusal
	if cfg.API.Listen != "" && len(cfg.API.Keys) == 0 {
		rs = append(rs, refusal{
			err: fmt.Errorf("%s: api.keys: empty while api.listen is %s: nobody could use the admin API; add a key (e.g. - ${WALHOOK_API_KEY}), or set api.listen: off",
				cfg.File, cfg.API.Listen),
			what: "admin API", fix: "add a key under api.keys (e.g. - ${WALHOOK_API_KEY}), or set api.listen: off",
			msg: fmt.Sprintf("api.listen is %s but api.keys is empty: walhook run refuses to serve an admin API nobody can use", cfg.API.Listen)})
	}
	cl, err := dispatch.NewClient(dispatch.ClientOptions{AllowHTTP: cfg.Delivery.AllowHTTP, Allow: cfg.Delivery.Allow})
	if err != nil {
		return append(rs, refusal{err: fmt.Errorf("%s: delivery.allow: %w", cfg.File, err),
			what: "endpoints", fix: "fix delivery.allow", msg: fmt.Sprintf("the delivery policy cannot be built: %v", err)})
	}
	for i, e := range cfg.Endpoints {
		if err := cl.ValidateURL(e.URL); err != nil {
			where := e.Pos.String()
			if e.Pos.Line == 0 {
				where = cfg.File
			}
			rs = append(rs, refusal{err: fmt.Errorf("%s: endpoints[%d].url: static endpoint %q: %w", where, i, e.ID, err),
				what: fmt.Sprintf("endpoints[%d] %s", i, e.ID), fix: "use https:// to a public address, or list the host in delivery.allow",
				msg: fmt.Sprintf("url refused by the delivery policy (%v): walhook run would not start", err)})
		}
	}
	return rs
}

// refusedByRun is every refusal of cfg as one usage error, nil when there
// is none.
func refusedByRun(cfg *config.Config) error {
	var errs []error
	for _, r := range refusals(cfg) {
		errs = append(errs, r.err)
	}
	if len(errs) == 0 {
		return nil
	}
	return &UsageError{Err: errors.Join(errs...)}
}
