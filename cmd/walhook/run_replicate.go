package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/lograte"
	"github.com/walhook/walhook/mapper"
)

// Several walhook processes may share one store (ARCHITECTURE.md): all of
// them deliver, one of them replicates. PostgreSQL lets one walsender use a
// slot at a time, but waiting on the slot alone is not enough: the process
// that takes the slot over must start from the store's cursor as it is at
// that moment, not as it was when the process started. A session-level
// advisory lock on the store makes the leader explicit: whoever holds it
// reads the cursor, then streams. A crashed leader's session ends, and with
// it the lock.

// Tuning of the replication part.
var (
	// leaderPoll is how often a standby process tries the leader lock and
	// how often the leader checks it still holds it.
	leaderPoll = time.Second
	// maxBatchTxs and maxBatchEvents bound one Append: transactions already
	// waiting in the stream's channel are stored together (one store
	// commit), but never more than this.
	maxBatchTxs    = 1000
	maxBatchEvents = 20000
	// handoffWait is how long the consumer waits for its workers to free
	// any room before it stores a backlog's next batch pending instead
	// (workers that keep freeing some are waited for).
	handoffWait = 100 * time.Millisecond
	// handoffMaxLag is how far behind (the commit time of the transaction
	// in hand) the consumer may fall by pacing a backlog to its workers;
	// further behind, it stores the backlog at full speed so the slot
	// lets go of the WAL.
	handoffMaxLag = time.Minute
	// appendRetryFor is how long a failing Append (store unreachable) is
	// retried before walhook gives up and exits.
	appendRetryFor = time.Minute
	// appendStopGrace is how long an Append under way when walhook is
	// told to stop may still take.
	appendStopGrace = 5 * time.Second
)

// leaderQueryTimeout bounds each store call of the leader lock, and
// termStartTimeout the store reads that start a leadership term: a call
// sent on a connection the network dropped without a word (a NAT or load
// balancer that forgot it) would wait for as long as TCP takes, forever
// behind a middlebox that keeps the socket open.
const (
	leaderQueryTimeout = 10 * time.Second
	termStartTimeout   = 30 * time.Second
)

var errLeaderLost = errors.New("lost the store connection that holds the slot's leader lock")

// termStartError is what a failed read of the store at the start of a
// leadership term ends the term with. Most failures are a store restart or
// a broken connection: errLeaderLost, so the lock is let go and taken
// again. An error the store answers with about the statement itself (a
// table or column missing, a schema gone, a privilege missing: SQLSTATE
// classes 42 and 3F) comes back the same on every try, so it stops run
// with the store's words instead: taken for a lost connection, it had run
// take and drop the slot over and over without ever streaming.
func termStartError(what string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "42") || strings.HasPrefix(pe.Code, "3F")) {
		return fmt.Errorf("%s: %w: the store schema lacks what its version needs (edited by hand, "+
			"or migrated by another build of walhook), or the role lacks a privilege on it", what, err)
	}
	return fmt.Errorf("%w: %s: %v", errLeaderLost, what, err)
}

// leaderLockKey names the lock: one leader per store schema and slot.
func leaderLockKey(schema, slot string) string { return "walhook.slot." + schema + "." + slot }

// replicate is the replication part of `walhook run`: it waits to become
// the slot's leader, then streams until ctx ends. A lost lock (store
// connection broken) ends the term and it waits again; any other error
// ends the part.
func (r *runner) replicate(ctx context.Context) error {
	key := leaderLockKey(r.cfg.Store.Schema, r.cfg.Source.Slot)
	lim := lograte.New(time.Minute)
	var lost *lockSession
	for {
		lock, err := acquireLeader(ctx, r.pool, key, r.log, r.repl.setWaiting, lim, lost)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		err = r.lead(ctx, lock)
		lock.release()
		lost = nil
		switch {
		case errors.Is(err, errLeaderLost):
			lost = &lock.session
			r.log.Warn("stopped replicating; waiting to take the slot again", logKeyErr, err)
		case errors.Is(err, dispatch.ErrCursorWentBack):
			// The next term reads the cursor as the store has it now,
			// and the stream resumes from it or stops with the gap.
			r.log.Error("stopped replicating: the store lost transactions it had committed; reading its cursor again", logKeyErr, err)
		case err != nil:
			return err
		case ctx.Err() != nil:
			return nil
		}
	}
}

// leaderLock is a dedicated store session holding the advisory lock.
type leaderLock struct {
	conn    *pgx.Conn
	key     string
	session lockSession
}

// lockSession names a store session: its server process and when it
// began (a process id alone may have been reused since).
type lockSession struct {
	pid   uint32
	start time.Time
}

// acquireLeader blocks until this process holds the lock (or ctx ends).
// While it waits, waiting is told why: stateStandby while another process
// holds the lock, stateWaitingForStore while the store does not answer.
// A store that stays away is logged once and then once a minute (lim),
// and its return once.
//
// lost, when set, is this process's own lock session of the term that
// ended because it stopped answering. Over a network that dropped it
// without a word (a NAT or load balancer that forgot the connection) the
// server keeps it, and the lock with it, until TCP keepalives or
// idle_session_timeout end it (bindLockSession), up to a minute behind a
// middlebox that answers the keepalives; no process could lead meanwhile.
// It is this process's, and its term is over, so it is ended at once
// (pg_terminate_backend, allowed on a session of one's own role), once.
func acquireLeader(ctx context.Context, pool *pgxpool.Pool, key string, log *slog.Logger, waiting func(string),
	lim *lograte.Limiter, lost *lockSession) (*leaderLock, error) {
	var conn *pgx.Conn
	var session lockSession
	standby := false
	warn := func(msg string, err error) {
		if ok, held := lim.Allow("leader lock"); ok {
			log.Warn(msg, logKeyErr, err, slog.Int("more_since_last_line", held))
		}
	}
	answered := func() {
		if lim.Clear("leader lock") {
			log.Info("leader lock: the store answers again")
		}
	}
	for {
		if conn == nil {
			// Bounded as the lock's query below: a connection the network
			// dropped without a word held the next term's start for as
			// long as TCP takes (TestRunStoreBlackholedWhileClaiming).
			actx, cancel := context.WithTimeout(ctx, leaderQueryTimeout)
			pc, err := pool.Acquire(actx)
			if err == nil {
				// Hijack: the session must stay ours, the pool must never
				// hand it (and the lock) to anyone else.
				conn = pc.Hijack()
				session, err = bindLockSession(actx, conn)
				if err != nil {
					closeConn(conn)
					conn = nil
					if ctx.Err() == nil {
						waiting(stateWaitingForStore)
						warn("leader lock: prepare the session", err)
					}
				} else if lost != nil {
					endLostSession(actx, conn, *lost, log)
					lost = nil
				}
			} else if ctx.Err() == nil {
				waiting(stateWaitingForStore)
				warn("leader lock: connect to the store", err)
			}
			cancel()
		}
		if conn != nil {
			var got bool
			// Bounded: on a half-open connection the query would wait for
			// TCP to give up, many minutes.
			qctx, cancel := context.WithTimeout(ctx, leaderQueryTimeout)
			err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&got)
			cancel()
			switch {
			case err == nil && got:
				answered()
				return &leaderLock{conn: conn, key: key, session: session}, nil
			case err == nil:
				answered()
				waiting(stateStandby)
				if !standby {
					standby = true
					log.Info("another walhook process holds the replication slot: delivering only, taking over when it stops")
				}
			case err != nil:
				waiting(stateWaitingForStore)
				closeConn(conn)
				conn = nil
				if ctx.Err() == nil {
					warn("leader lock", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			if conn != nil {
				closeConn(conn)
			}
			return nil, ctx.Err()
		case <-time.After(leaderPoll):
		}
	}
}

// bindLockSession makes the server end the lock's session when its
// process is gone without a word (a host that died, a network that
// dropped it): PostgreSQL releases a session's advisory lock only when it
// notices the session is dead, by default after the OS's TCP keepalive
// (about two hours), and no standby could take over until then. TCP
// keepalives every few seconds find a dead peer; idle_session_timeout
// (PostgreSQL 14+) ends a session nothing uses even where a middlebox
// answers the keepalives. The holder pings every leaderPoll and a standby
// polls as often, so a live process never idles that long, even starved
// of CPU under cpu.yield. Over a Unix socket the TCP settings do nothing.
// It returns the session's name (see acquireLeader's lost).
func bindLockSession(ctx context.Context, conn *pgx.Conn) (lockSession, error) {
	var s lockSession
	var pid int32
	err := conn.QueryRow(ctx, `SELECT pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()),
		set_config('tcp_keepalives_idle', '10', false),
		set_config('tcp_keepalives_interval', '5', false), set_config('tcp_keepalives_count', '3', false),
		CASE WHEN current_setting('server_version_num')::int >= 140000
		     THEN set_config('idle_session_timeout', '60s', false) END`).Scan(&pid, &s.start, nil, nil, nil, nil)
	s.pid = uint32(pid)
	return s, err
}

// endLostSession ends this process's lost lock session (see
// acquireLeader), if it is still there; a failure only leaves it to the
// server's own timeouts.
func endLostSession(ctx context.Context, conn *pgx.Conn, lost lockSession, log *slog.Logger) {
	var ended bool
	err := conn.QueryRow(ctx, `SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity
		WHERE pid = $1 AND backend_start = $2`, int32(lost.pid), lost.start).Scan(&ended)
	switch {
	case err != nil:
		log.Debug("leader lock: end this process's lost lock session (the store ends it by itself within a minute)",
			logKeyErr, err, slog.Int("session_pid", int(lost.pid)))
	case ended:
		log.Info("leader lock: ended this process's lock session that stopped answering (a network that dropped it), so the slot is led again at once",
			slog.Int("session_pid", int(lost.pid)))
	}
}

// watch returns errLeaderLost as soon as the lock's session stops
// answering, nil when ctx ends.
func (l *leaderLock) watch(ctx context.Context) error {
	return pollEvery(ctx, leaderPoll, func(pctx context.Context) error {
		if err := l.conn.Ping(pctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("%w: %v", errLeaderLost, err)
		}
		return nil
	})
}

// pollEvery runs check every interval, each run bounded to 10 s, until
// ctx ends (nil) or check returns an error (returned).
func pollEvery(ctx context.Context, interval time.Duration, check func(context.Context) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := check(cctx)
		cancel()
		if err != nil {
			return err
		}
	}
}

// release unlocks by closing the session (which also covers a session
// that is already broken).
func (l *leaderLock) release() { closeConn(l.conn) }

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// lead is one leadership term: stream from the store's cursor, map, append,
// confirm. On ctx's end the batch being appended is finished and confirmed
// before the stream stops, so its last status update to PostgreSQL carries
// the last durable position.
func (r *runner) lead(ctx context.Context, lock *leaderLock) error {
	slot := r.cfg.Source.Slot
	// A store that fails here (a connection broken by a store restart)
	// ends the term, not the process: the lock is let go and taken again.
	// The reads are bounded (termStartTimeout), as the lock's own check.
	term := ctx
	ctx, cancelStart := context.WithTimeout(term, termStartTimeout)
	defer cancelStart()
	cursor, systemID, ok, err := r.disp.Cursor(ctx, slot)
	if err != nil {
		return termStartError("read the cursor", err)
	}
	if ok && systemID != "" && systemID != r.systemID {
		gap := &cursorGap{name: slot, cursor: cursor, otherSystem: systemID, system: r.systemID}
		return fmt.Errorf("%s — fix: %s", gap, otherSystemFix)
	}
	if walEnd, forked, err := dispatch.StoredFork(ctx, r.pool, r.cfg.Store.Schema, slot); err != nil {
		return termStartError("read the cursor's fork", err)
	} else if forked {
		return fmt.Errorf("%w: the store's cursor for slot %q (%s) was found past the server's WAL end %s: the store "+
			"followed another history of the source (a failover to a standby that was behind, or a point-in-time "+
			"restore), and streaming from the cursor would skip the changes the server wrote up to it; run walhook "+
			"setup --accept-gap to start from the slot", cdc.ErrCursorAhead, slot, cursor, walEnd)
	}
	// From here on the cursor may only be found where it was read or
	// past it: one found behind is a store that lost what it committed.
	r.disp.ExpectCursor(slot, cursor)
	epoch, epochFrom, err := r.disp.IDEpoch(ctx, slot)
	if err != nil {
		return termStartError("read the id epoch", err)
	}
	r.mapper.SetIDEpoch(epoch, epochFrom)
	legacy, err := r.disp.HalfStoredLegacyTx(ctx, slot)
	if err != nil {
		return termStartError("read the last stored event", err)
	}
	r.mapper.SetLegacyIDs(legacy)
	if legacy != 0 {
		r.log.Info("a transaction an older walhook stored in part is replayed under the ids it was stored with",
			slog.String("commit_lsn", legacy.String()))
	}
	cancelStart()
	ctx = term
	opts := streamOptions(r.cfg, r.log)
	opts.SystemID = r.systemID
	opts.Durable = func(ctx context.Context) (cdc.LSN, bool, error) {
		ctx, cancel := context.WithTimeout(ctx, termStartTimeout)
		defer cancel()
		lsn, _, ok, err := r.disp.Cursor(ctx, slot)
		return lsn, ok, err
	}
	stream, err := cdc.NewStream(opts)
	if err != nil {
		return err
	}
	r.repl.current.Store(stream)
	defer r.repl.endTerm(stream)
	defer r.lastCommit.Store(0)
	// Until the first transaction or keepalive says where the source is,
	// the lag counts from the takeover: a term that begins while
	// cpu.yield defers intake (a standby taking over on busy cores)
	// must fall behind by cpu.max_lag and then take changes in, where a
	// lag of 0 would keep it deferring for as long as the cores stay busy.
	r.lastCommit.Store(time.Now().UnixNano())
	from := "the slot's confirmed position (no cursor yet)"
	if ok {
		from = cursor.String()
	}
	r.log.Info("replicating: this process holds the slot", logKeySlot, slot, logKeyLSN, from)

	leadCtx, stopLead := context.WithCancelCause(ctx)
	defer stopLead(nil)
	// The stream outlives ctx a little: it is stopped only after the
	// consumer has confirmed its last batch.
	streamCtx, stopStream := context.WithCancel(context.WithoutCancel(ctx))
	defer stopStream()

	var wg sync.WaitGroup
	streamErr := make(chan error, 1)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := r.watchPublication(leadCtx); err != nil {
			stopLead(err)
		}
	}()
	go func() {
		defer wg.Done()
		err := stream.Run(streamCtx, cursor)
		if err != nil {
			stopLead(err)
		}
		streamErr <- err
	}()
	go func() {
		defer wg.Done()
		if err := lock.watch(leadCtx); err != nil {
			stopLead(err)
		}
	}()

	cerr := r.consume(leadCtx, stream)
	stopStream()
	serr := <-streamErr
	cause := context.Cause(leadCtx)
	stopLead(nil)
	wg.Wait()
	switch {
	case cerr != nil:
		return cerr
	case serr != nil:
		// A fork stays refused after the server's WAL passes the cursor.
		if ae := (*cdc.CursorAheadError)(nil); errors.As(serr, &ae) {
			if err := dispatch.RecordFork(context.WithoutCancel(ctx), r.pool, r.cfg.Store.Schema, slot, ae.WALEnd); err != nil {
				r.log.Error("record the fork in the store", slog.Any("error", err))
			}
		}
		return fmt.Errorf("replication: %w", serr)
	case errors.Is(cause, errLeaderLost), errors.Is(cause, errPublicationChanged), errors.Is(cause, errTableUnlogged),
		errors.Is(cause, errRulesNoLongerFit):
		return cause
	}
	return nil
}

var errPublicationChanged = errors.New("the publication changed while walhook ran")

// errTableUnlogged: a rule table, or a partition of one, was made UNLOGGED
// while walhook ran (see readUnlogged).
var errTableUnlogged = errors.New("a rule table became UNLOGGED while walhook ran")

// errRulesNoLongerFit: a when: no longer fits the columns it compares
// (see watchRuleTables).
var errRulesNoLongerFit = errors.New("the rules' when: no longer fit the rule tables' columns")

// publicationPoll is how often the leader checks that the publication
// still sends the rule tables' changes as the rules need them.
const publicationPoll = 10 * time.Second

// watchPublication stops the term when the publication stops sending a
// rule table's changes as the rules need them, checked as at startup
// (publicationFit): the table left it (ALTER PUBLICATION … DROP TABLE, or
// the table dropped and created again), and PostgreSQL then sends nothing
// for it, not even an error, so the rules would go quiet; or it gained a
// row filter or a column list, or lost publish_via_partition_root, and
// PostgreSQL then sends changes the rules misread or never match; or a
// partition of a rule table was made UNLOGGED (readUnlogged), whose
// changes then never reach the WAL. One
// check is a connection and a few catalog queries on small catalogs,
// every publicationPoll. A failing check (the source unreachable) is the
// stream's to report; it is tried again.
func (r *runner) watchPublication(ctx context.Context) error {
	pub := r.cfg.Source.Publication
	var seen, openSeen schemaWarnings
	// One connection for the term, made again when it breaks: a new one
	// per check was a session, a login and its log lines every 10 s.
	var conn *pgx.Conn
	defer func() { // the next term's leader checks again
		r.repl.setWarnings(nil)
		r.ruleProblems.Set(0)
		if conn != nil {
			closeConn(conn)
		}
	}()
	return pollEvery(ctx, publicationPoll, func(cctx context.Context) error {
		if conn == nil || conn.IsClosed() {
			c, err := pgx.Connect(cctx, r.cfg.Source.DSN)
			if err != nil {
				conn = nil
				return nil
			}
			conn = c
		}
		unlogged, err := readUnlogged(cctx, conn, r.mapper.Tables())
		if err != nil {
			closeConn(conn) // made again at the next check
			conn = nil
			return nil
		}
		if lines := unloggedLines(r.mapper.Tables(), unlogged); len(lines) > 0 {
			return fmt.Errorf("%w: its changes write no WAL, so logical replication never sees them and no event of them "+
				"is made; fix it, then check what changed in it meanwhile (those changes cannot be sent):\n%s",
				errTableUnlogged, strings.Join(lines, "\n"))
		}
		missing, unusable, err := publicationFit(cctx, conn, pub, r.mapper.Tables(), ruleOperations(r.cfg))
		switch {
		case err != nil:
			closeConn(conn) // made again at the next check
			conn = nil
			return nil
		case len(missing) > 0:
			return fmt.Errorf("%w: publication %s does not publish %s any more (ALTER PUBLICATION, the table renamed, or "+
				"dropped and created again), so no change of it arrives; run walhook setup (or put a renamed table's new "+
				"name in the rules), then check what changed meanwhile%s",
				errPublicationChanged, pub, strings.Join(missing, ", "), prefixLines("\n", unusable))
		case len(unusable) > 0:
			return fmt.Errorf("%w: it no longer sends the rule tables' changes as the rules need them; fix it, "+
				"then check what changed meanwhile:\n%s",
				errPublicationChanged, strings.Join(unusable, "\n"))
		}
		if err := r.watchRuleTables(cctx, conn, &seen); err != nil {
			return err
		}
		r.watchOpenTransactions(cctx, conn, &openSeen)
		return nil
	})
}

// schemaWarnEvery is how often a rule-table problem that persists is
// logged again.
const schemaWarnEvery = 10 * time.Minute

// watchRuleTables checks the rule tables as run's startup does
// (checkLiveSchema) and reports what no longer fits, without stopping:
// a partition created or attached with the default REPLICA IDENTITY, a
// table's identity set back from FULL, a column a rule reads dropped.
// Nothing is wrong yet (walhook stops at the first change that needs
// what is missing, see mapStop), so the problems are logged (on change,
// and every schemaWarnEvery while they last), shown by /api/v1/status
// (slot.warnings) and counted by walhook_rule_table_problems, for
// someone to fix before such a change comes. seen carries the last
// report between polls.
//
// A when: that no longer fits its columns (an enum label it compares
// renamed, a column's type changed) is different: walhook does not stop
// at a change then, it maps every change with a comparison that has one
// answer, and so makes no event or a wrong one on every row. That stops
// the term (errRulesNoLongerFit), as a publication change does.
func (r *runner) watchRuleTables(ctx context.Context, conn *pgx.Conn, seen *schemaWarnings) error {
	schema, parts, err := readSourceSchema(ctx, conn, r.mapper.Tables())
	if err != nil {
		return nil
	}
	problems, err := ruleSchemaErrors(r.cfg, r.mapper, schema, parts)
	if err != nil {
		return nil
	}
	var misfit []string
	for _, p := range problems {
		if errors.Is(p.err, mapper.ErrExpression) {
			misfit = append(misfit, "  "+p.message(parts))
		}
	}
	if len(misfit) > 0 {
		return fmt.Errorf("%w: walhook would map every change of their tables with a comparison that has one answer, "+
			"and make no event or a wrong one; correct the rules, restart, and check the events of the changes "+
			"since the schema changed:\n%s", errRulesNoLongerFit, strings.Join(misfit, "\n"))
	}
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = p.message(parts)
		if p.fix != "" {
			lines[i] += " — fix: " + p.fix
		}
	}
	r.repl.setWarnings(lines)
	r.ruleProblems.Set(float64(len(lines)))
	switch {
	case len(lines) == 0 && len(seen.lines) > 0:
		r.log.Info("the rule tables send what the rules need again")
	case len(lines) > 0 && (!slices.Equal(lines, seen.lines) || time.Since(seen.logged) >= schemaWarnEvery):
		r.log.Error("the rule tables no longer send what the rules need: walhook stops at the first change "+
			"that needs what is missing (a transaction it could then only skip); fix it before such a change comes",
			slog.Any("problems", lines))
		seen.logged = time.Now()
	}
	seen.lines = lines
	return nil
}

// watchOpenTransactions logs, when they change and every schemaWarnEvery
// while they last, the prepared transactions and sessions' transactions
// older than openTransactionAge: they hold the slot's WAL, which walhook
// cannot release (TestRunLogsAnOldPreparedTransaction).
func (r *runner) watchOpenTransactions(ctx context.Context, conn *pgx.Conn, seen *schemaWarnings) {
	open, err := cdc.OpenTransactions(ctx, conn, conn.PgConn().PID(), time.Now().Add(-openTransactionAge))
	if err != nil {
		return
	}
	switch {
	case len(open) == 0 && len(seen.lines) > 0:
		r.log.Info("no old open transaction holds the slot's WAL any more")
	case len(open) > 0 && (!slices.Equal(open, seen.lines) || time.Since(seen.logged) >= schemaWarnEvery):
		r.log.Warn(fmt.Sprintf("open transactions older than %s on the source: each %s", openTransactionAge, openTransactionProblem),
			slog.Any("transactions", open))
		seen.logged = time.Now()
	}
	seen.lines = open
}

// schemaWarnings is what watchRuleTables reported last, and when it logged.
type schemaWarnings struct {
	lines  []string
	logged time.Time
}

// prefixLines joins lines, each after prefix.
func prefixLines(prefix string, lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(prefix + l)
	}
	return b.String()
}

// consume moves transactions from the stream into the outbox until ctx
// ends: map, Append (the durability point), then Confirm. Transactions
// already waiting in the channel are appended together in one store commit
// (throughput); a lone transaction is appended at once (latency).
// Position advances (Final Txs without changes) are appended too, so the
// cursor — and through Confirm the slot — follows the server's WAL end.
func (r *runner) consume(ctx context.Context, stream *cdc.Stream) error {
	txs := stream.Txs()
	batch := make([]dispatch.TxEvents, 0, 64)
	pace := true
	for {
		// While cpu.yield defers, transactions wait in the stream (which
		// keeps the connection alive) and then in the slot.
		if !r.intakeOpen(ctx) {
			return nil
		}
		var tx *cdc.Tx
		select {
		case <-ctx.Done():
			return nil
		case tx = <-txs:
		}
		batch = batch[:0]
		events := 0
		limit := maxBatchEvents
		for {
			if !tx.CommitTime.IsZero() {
				r.lastCommit.Store(tx.CommitTime.UnixNano())
			}
			te, err := r.mapTx(tx)
			if err != nil {
				// The transactions before it are stored, so that the
				// cursor is at the stopped one and setup --skip-to its
				// end skips it alone. Unless they could not be (the
				// store is down, or this process is stopping: appendBatch
				// then stores nothing and says nil): a skip to its end
				// would lose them too, so the message does not offer it.
				if len(batch) > 0 {
					if aerr := r.appendBatch(ctx, stream, batch, events); errors.Is(aerr, errStoppedUnstored) {
						return withUnstored(err, nil)
					} else if aerr != nil {
						return withUnstored(err, aerr)
					}
				}
				return err
			}
			batch = append(batch, te)
			if len(batch) == 1 && len(te.Events) > 0 && mayPace(te.CommitTime, time.Now()) {
				limit = r.handoffLimit(ctx, len(te.Events), len(txs) > 0, &pace)
			}
			events += len(te.Events)
			if len(batch) >= maxBatchTxs || events >= limit {
				break
			}
			select {
			case tx = <-txs:
				continue
			default:
			}
			break
		}
		if err := r.appendBatch(ctx, stream, batch, events); errors.Is(err, errStoppedUnstored) {
			// Nothing more is taken: a later batch stored would move the
			// cursor, and the slot, past this one.
			return nil
		} else if err != nil {
			return err
		}
	}
}

// errStoppedUnstored is appendBatch's answer when the process stops while
// the batch's Append keeps failing: nothing of the batch was stored or
// confirmed, and it comes again from the slot at the next start, as long
// as nothing after it is stored first.
var errStoppedUnstored = errors.New("stopping with the batch not stored")

// handoffLimit returns how many events the batch that starts with first
// events should hold. While the workers keep freeing room, a batch is what
// they have room for, so that Append hands it straight over instead of
// storing it for them to claim (see dispatch.HandoffRoom): a backlog then
// flows to the workers at their pace, each delivery written twice instead
// of three times. When no room frees up for handoffWait (an
// endpoint that hangs, no workers here), batches are as large as allowed
// and what does not fit is stored pending, until room shows up again.
// The consumer paces only while it is less than handoffMaxLag behind, so
// pacing never keeps more than that much WAL in the slot.
func (r *runner) handoffLimit(ctx context.Context, first int, backlog bool, pace *bool) int {
	want := first
	if backlog {
		want = maxBatchEvents
	}
	wait := handoffWait
	if !*pace {
		wait = 0
	}
	room, ok := r.disp.HandoffRoom(ctx, want, wait)
	if *pace && !ok {
		r.log.Debug("no room at the workers for the waiting transactions; storing them pending for any process to claim",
			slog.Int("room", room), slog.Duration("waited", wait))
	}
	*pace = ok
	if !ok {
		return maxBatchEvents
	}
	return max(room, 1)
}

// mayPace reports whether a transaction committed at commitTime is recent
// enough to be paced to the workers (handoffMaxLag). A commit time ahead
// of the clock (a skewed server) counts as recent.
func mayPace(commitTime, now time.Time) bool {
	return now.Sub(commitTime) <= handoffMaxLag
}

func (r *runner) mapTx(tx *cdc.Tx) (dispatch.TxEvents, error) {
	evs, err := r.mapper.Map(tx)
	if err != nil {
		return dispatch.TxEvents{}, mapStopError(tx, err)
	}
	return dispatch.TxEvents{
		Xid: tx.Xid, CommitLSN: tx.CommitLSN, EndLSN: tx.EndLSN, Final: tx.Final,
		CommitTime: tx.CommitTime, Events: evs,
	}, nil
}

// mapStopError is what run stops with when tx cannot be mapped. Nothing
// of tx is confirmed, so every restart stops at it again, and fixing the
// table does not help: PostgreSQL decodes a change as it was written. So
// it names the two ways past it: a rule that maps it, or walhook setup
// --skip-to the transaction's end, which loses its events.
func mapStopError(tx *cdc.Tx, err error) error { return &mapStop{tx: tx, err: err} }

// mapStop is the error run stops with at a transaction no rule can map.
type mapStop struct {
	tx  *cdc.Tx
	err error
	// unstored: the transactions before it in its batch could not be
	// stored (why, when known); the cursor is then before them.
	unstored    bool
	unstoredWhy error
}

func (m *mapStop) Unwrap() error { return m.err }

// withUnstored marks err (a *mapStop) as stopping with the transactions
// before it not stored.
func withUnstored(err, why error) error {
	var m *mapStop
	if errors.As(err, &m) {
		m.unstored, m.unstoredWhy = true, why
		return m
	}
	return err
}

func (m *mapStop) Error() string {
	tx, err := m.tx, m.err
	hint, fix := "", ""
	if errors.Is(err, mapper.ErrNeedsOldValues) {
		// The partitioned table may be FULL while the partition the
		// row is in (one created or attached since start) is not.
		hint = " (on a partitioned table, each partition needs REPLICA IDENTITY FULL of its own, partitions created or " +
			"attached later too: walhook check names those without it, walhook setup --replica-identity sets it)"
		fix = " — fixing the table lets the changes written after the fix through, but not this one: PostgreSQL wrote " +
			"it without old values and sends it so on every restart"
	}
	// PostgreSQL skips a transaction whose commit record starts before
	// the position replication starts from (SnapBuildXactNeedsSkip), so
	// the end of the transaction, or before its commit arrived one byte
	// past the commit record's start, skips it and nothing after it.
	skipTo, at := tx.EndLSN, ""
	if !tx.Final {
		skipTo = tx.CommitLSN + 1
		at = fmt.Sprintf(", just past its commit record at %s (its end is not known yet)", tx.CommitLSN)
	}
	switch {
	case tx.Chunk == 1:
		at += "; the events of its first part were stored already and stay"
	case tx.Chunk > 1:
		at += fmt.Sprintf("; the events of its first %d parts were stored already and stay", tx.Chunk)
	}
	way := "Fix the rule, then restart"
	if fix != "" {
		way = "To get past it, change the rule so it does not read old values, then restart"
	}
	if m.unstored {
		why := "this process was stopping"
		if m.unstoredWhy != nil {
			why = m.unstoredWhy.Error()
		}
		// No position to skip to is safe yet: the cursor is before the
		// transactions that came first, and a skip would lose them too.
		return fmt.Sprintf("mapping stopped replication: %v%s%s; the transactions before it could not be stored "+
			"(%s), so nothing from them on was stored or confirmed and a restart stops here again. %s; or restart "+
			"once the store answers: run then stores them and names the position to skip this transaction with "+
			"walhook setup --skip-to (docs/operations.md)", err, hint, fix, why, way)
	}
	return fmt.Sprintf("mapping stopped replication: %v%s%s; nothing from this transaction on was stored or confirmed, "+
		"so a restart stops here again. %s; or, to skip this transaction's events, stop every walhook on this store "+
		"and run walhook setup --skip-to %s%s (docs/operations.md)", err, hint, fix, way, skipTo, at)
}

// appendBatch appends and then confirms the batch's last complete
// transaction. A failing Append is retried (it is idempotent: deterministic
// event ids, ON CONFLICT DO NOTHING, a cursor that never moves back) with
// backoff for appendRetryFor. It is not cut short by ctx at once: a
// graceful stop gives the batch in hand up to appendStopGrace to finish,
// so its position can be confirmed. If an Append fails once ctx has ended, it gives up and says errStoppedUnstored:
// the caller must then take nothing more from the stream.
func (r *runner) appendBatch(ctx context.Context, stream *cdc.Stream, batch []dispatch.TxEvents, events int) error {
	var confirm cdc.LSN
	for i := range batch {
		if batch[i].Final {
			confirm = max(confirm, batch[i].EndLSN)
		}
	}
	actx := context.WithoutCancel(ctx)
	deadline := time.Now().Add(appendRetryFor)
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		tctx, cancel := context.WithTimeout(actx, 30*time.Second)
		// A stop gives the Append in hand appendStopGrace more, not the
		// rest of its 30 s: a store that froze would otherwise hold the
		// stop past a 30 s grace period (Kubernetes' default), and what
		// is not appended is replayed from the slot at the next start.
		unwatch := context.AfterFunc(ctx, func() { time.AfterFunc(appendStopGrace, cancel) })
		err := r.disp.Append(tctx, r.cfg.Source.Slot, r.systemID, batch)
		unwatch()
		cancel()
		if err == nil {
			break
		}
		if errors.Is(err, dispatch.ErrCursorWentBack) {
			// Not retried: appending again would move the cursor past
			// what the store lost.
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("store: %w (retried for %s)", err, appendRetryFor)
		}
		if ctx.Err() != nil {
			// Stopping: what is not appended is not confirmed either, and
			// comes again from the slot at the next start.
			r.log.Warn("replication stops (walhook is stopping, or lost the store) with a batch not appended; it will be replayed", logKeyErr, err)
			return errStoppedUnstored
		}
		r.log.Warn("append to the outbox failed; retrying", logKeyErr, err, logKeyAttempt, attempt, logKeyRetryIn, delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	if confirm > 0 {
		stream.Confirm(confirm)
	}
	if events > 0 {
		r.log.Debug("appended", logKeyTxs, len(batch), logKeyEvents, events, logKeyLSN, confirm.String())
	}
	return nil
}
