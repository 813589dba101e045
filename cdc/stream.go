package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options configure a Stream.
type Options struct {
	// DSN of the source database, a normal connection URL or keyword string;
	// the stream adds replication=database for its replication connection.
	DSN               string
	Slot, Publication string
	// HeartbeatInterval is the cadence of pg_logical_emit_message heartbeats
	// that let the slot advance while the published tables are idle; 0 = off.
	HeartbeatInterval time.Duration
	// StatusInterval is the longest gap between standby status updates
	// (default 10s). It also paces position advances from keepalives.
	StatusInterval time.Duration
	// MaxChunkChanges is the most changes one Tx value carries; larger
	// transactions arrive in several chunks (default 10000).
	MaxChunkChanges int
	// TxBuffer is the capacity of the Txs channel (default 64).
	TxBuffer int
	// MaxBufferedChanges caps the changes waiting in the Txs channel
	// (default 4 × MaxChunkChanges), so a slow consumer of a huge
	// transaction holds a few chunks in memory, not TxBuffer of them.
	MaxBufferedChanges int
	// MaxReconnectDelay caps the exponential reconnect backoff (default 30s).
	MaxReconnectDelay time.Duration
	// ReceiveTimeout is how long the server may send nothing at all before
	// the connection counts as gone and is made again (default 60s, as
	// PostgreSQL's own wal_receiver_timeout). Halfway through the stream
	// asks the server for a reply, so a live server always answers in
	// time; a frozen host or a network that drops packets without a reset
	// would otherwise hold the stream for as long as TCP takes to notice.
	ReceiveTimeout time.Duration
	// Durable, when set, returns the position the consumer has made
	// durable (the store's cursor; ok is false when there is none yet).
	// The stream reads it before every connection, so a consumer that
	// takes the slot over from another process that shares its store
	// starts from what that process stored, not from what it read
	// while the other still held the slot.
	Durable func(ctx context.Context) (lsn LSN, ok bool, err error)
	// DryRun is a consumer that never confirms and must not move the
	// slot. Its status updates carry no flush (nor apply) position, from
	// which alone PostgreSQL moves a slot, and as written the position
	// the server last said it sent: a walsender whose server shuts down
	// exits only once its client has written all it sent (or flushed,
	// when it reports a flush position), and the postmaster waits for it.
	DryRun bool
	// SystemID, when set, is the source's system identifier as walhook
	// read it when it started (IDENTIFY_SYSTEM), which its event ids and
	// its cursor carry. Every connection checks it: a source DSN that
	// reaches another cluster once walhook runs (a pg_upgrade under a
	// running walhook, a blue/green switchover that moves the DSN's name)
	// stops the stream with ErrSystemChanged, before its slot is looked at.
	SystemID string
	Logger   *slog.Logger
}

// Stream states reported in SlotStatus.State.
const (
	StateConnecting     = "connecting"
	StateStreaming      = "streaming"
	StateWaitingForSlot = "waiting_for_slot"
	StateError          = "error"
	StateStopped        = "stopped"
)

// Log attribute keys.
const (
	logKeySlot    = "slot"
	logKeyLSN     = "lsn"
	logKeyErr     = "err"
	logKeyDelay   = "retry_in"
	logKeyPID     = "active_pid"
	logKeyAttempt = "attempt"
)

// Stream turns a logical replication slot into committed transactions (see
// Run) and confirms positions back to PostgreSQL only when the consumer has
// made them durable (see Confirm).
type Stream struct {
	opts    Options
	log     *slog.Logger
	replCfg *pgconn.Config
	sqlCfg  *pgx.ConnConfig
	txs     chan *Tx
	running atomic.Bool

	// confirmed is the highest LSN the consumer reported durable.
	confirmed atomic.Uint64
	// handed is the EndLSN of the last Final Tx sent on txs.
	handed atomic.Uint64
	// nhanded counts the values sent on txs.
	nhanded atomic.Uint64

	lastMessageAt atomic.Int64 // unix nanoseconds
	lastConfirmAt atomic.Int64
	// caughtUpAt is when a keepalive last said the server had sent
	// nothing past what this stream had confirmed (see UpToDateAt).
	caughtUpAt atomic.Int64
	runAt      atomic.Int64 // when Run started
	reconnects atomic.Int64
	// walsender is the server process of this stream's last replication
	// connection, and walsenderStart its backend_start (seconds since the
	// epoch, as text): a process id alone may be another's by the time
	// the stream looks (see endAbandoned).
	walsender      atomic.Uint32
	walsenderStart atomic.Pointer[string]

	// statusConn is Status's connection; statusTurn (capacity 1) is
	// held by whoever uses it.
	statusTurn   chan struct{}
	statusConn   *pgx.Conn
	statusClosed bool // CloseStatus was called: keep no connection

	mu        sync.Mutex
	state     string
	lastError string
	activePID int
}

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// NewStream validates opts and prepares a stream; it does not connect.
func NewStream(opts Options) (*Stream, error) {
	if opts.DSN == "" {
		return nil, errors.New("cdc: DSN is empty")
	}
	if !slotNameRE.MatchString(opts.Slot) {
		return nil, fmt.Errorf("cdc: slot name %q: use 1-63 lower-case letters, digits and underscores (PostgreSQL's rule for slot names)", opts.Slot)
	}
	if opts.Publication == "" {
		return nil, errors.New("cdc: publication name is empty")
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.MaxChunkChanges <= 0 {
		opts.MaxChunkChanges = 10000
	}
	if opts.TxBuffer <= 0 {
		opts.TxBuffer = 64
	}
	if opts.MaxBufferedChanges <= 0 {
		opts.MaxBufferedChanges = 4 * opts.MaxChunkChanges
	}
	if opts.MaxReconnectDelay <= 0 {
		opts.MaxReconnectDelay = 30 * time.Second
	}
	if opts.ReceiveTimeout <= 0 {
		opts.ReceiveTimeout = 60 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	replCfg, err := replicationConfig(opts.DSN)
	if err != nil {
		return nil, err
	}
	sqlCfg, err := pgx.ParseConfig(opts.DSN)
	if err != nil {
		return nil, fmt.Errorf("cdc: parse DSN: %w", redact(err))
	}
	return &Stream{
		opts: opts, log: opts.Logger.With(logKeySlot, opts.Slot),
		replCfg: replCfg, sqlCfg: sqlCfg,
		txs:   make(chan *Tx, opts.TxBuffer),
		state: StateStopped, statusTurn: make(chan struct{}, 1),
	}, nil
}

// replicationConfig parses dsn for a logical replication connection with
// session settings that make text values decode the same on every server:
// ISO dates, UTC, postgres interval style, shortest-exact floats, hex bytea.
func replicationConfig(dsn string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("cdc: parse DSN: %w", redact(err))
	}
	set := map[string]string{
		"replication":        "database",
		"DateStyle":          "ISO",
		"IntervalStyle":      "postgres",
		"extra_float_digits": "3",
		"TimeZone":           "UTC",
		"bytea_output":       "hex", // a database may default to escape
	}
	// Setting names are case-insensitive: a DSN's datestyle=SQL or PGTZ
	// (pgconn's "timezone") would be sent beside these, and the server
	// keeps whichever the startup message, built from a map, has last.
	for k := range cfg.RuntimeParams {
		for name := range set {
			if strings.EqualFold(k, name) {
				delete(cfg.RuntimeParams, k)
			}
		}
	}
	for k, v := range set {
		cfg.RuntimeParams[k] = v
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "walhook"
	}
	return cfg, nil
}

// redact drops the connection string pgconn puts into parse errors: it may
// hold a password.
func redact(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		pe.ConnString = "(redacted)"
	}
	return err
}

// Txs delivers committed transactions (in chunks for large ones) in commit
// order. It is never closed; stop reading when Run has returned.
func (s *Stream) Txs() <-chan *Tx { return s.txs }

// Confirm reports that the consumer has made everything up to lsn (a Tx's
// EndLSN) durable. Only such positions are ever confirmed to PostgreSQL.
// Safe from any goroutine; lower positions than before are ignored.
func (s *Stream) Confirm(lsn LSN) {
	for {
		cur := s.confirmed.Load()
		if uint64(lsn) <= cur || s.confirmed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

func (s *Stream) setState(state string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = state
	if err != nil {
		s.lastError = err.Error()
	} else if state == StateStreaming {
		s.lastError = ""
	}
}

// Run owns the replication connection: it streams from start (the store's
// cursor; 0 means the slot's confirmed_flush_lsn), reconnects with capped
// exponential backoff and jitter after connection loss or a PostgreSQL
// restart, and returns nil when ctx is cancelled or a permanent error (one
// of the sentinel errors) otherwise. While another process holds the slot it
// waits and retries, never dropping the slot.
func (s *Stream) Run(ctx context.Context, start LSN) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("cdc: Run is already running")
	}
	defer s.running.Store(false)
	s.runAt.Store(time.Now().UnixNano())

	var wg sync.WaitGroup
	hbCtx, stopHeartbeat := context.WithCancel(ctx)
	defer wg.Wait()
	defer stopHeartbeat()
	if s.opts.HeartbeatInterval > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); s.heartbeat(hbCtx) }()
	}

	n0 := s.nhanded.Load()
	pos := start
	delay := time.Duration(0)
	waitingSaid := false
	for attempt := 1; ; attempt++ {
		s.setState(StateConnecting, nil)
		// Until this Run hands something out, every attempt starts from
		// start again (or the slot's position as it is then): a position
		// read while another process held the slot is stale once it lets
		// go.
		fresh := s.nhanded.Load() == n0
		streamed, err := s.attempt(ctx, &pos, start, fresh)
		if ctx.Err() != nil {
			s.setState(StateStopped, nil)
			return nil
		}
		if err == nil || streamed {
			delay = 0
		}
		if permanent(err) {
			s.setState(StateError, err)
			s.log.Error("replication stopped", logKeyErr, err)
			return err
		}
		if errors.Is(err, ErrSlotActive) {
			s.setState(StateWaitingForSlot, err)
		} else {
			s.setState(StateConnecting, err)
		}
		delay = nextDelay(delay, s.opts.MaxReconnectDelay)
		s.reconnects.Add(1)
		switch {
		case errors.Is(err, ErrSlotActive) && waitingSaid:
			// Said once: a dry run beside a running walhook waits for as
			// long as that one runs.
			s.log.Debug("still waiting for the slot", logKeyErr, err, logKeyDelay, delay, logKeyAttempt, attempt)
		case errors.Is(err, ErrSlotActive):
			waitingSaid = true
			s.log.Info("waiting for the slot, which another session streams from", logKeyErr, err, logKeyDelay, delay)
		default:
			waitingSaid = false
			s.log.Warn("replication interrupted; reconnecting", logKeyErr, err, logKeyDelay, delay, logKeyAttempt, attempt)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			s.setState(StateStopped, nil)
			return nil
		case <-t.C:
		}
	}
}

// nextDelay doubles the backoff from 250ms up to max, with jitter in
// [d/2, d] so many walhook processes do not reconnect in lockstep.
func nextDelay(prev, max time.Duration) time.Duration {
	d := prev * 2
	if d < 250*time.Millisecond {
		d = 250 * time.Millisecond
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

// attempt runs one connection: checks the slot, then streams. pos is the
// position to start from and is advanced to the last position handed out,
// so a reconnect does not hand out again what the consumer already has.
// While fresh (nothing handed out yet) pos is derived again from start.
// streamed reports whether the stream got as far as receiving data.
func (s *Stream) attempt(ctx context.Context, pos *LSN, start LSN, fresh bool) (streamed bool, err error) {
	slot, err := s.preflight(ctx)
	if err != nil {
		return false, err
	}
	// A held slot is waited for before its position means anything: the
	// holder may still be confirming.
	if slot.Active {
		s.mu.Lock()
		s.activePID = slot.ActivePID
		s.mu.Unlock()
		return false, fmt.Errorf("%w: slot %q is in use by server process %d (the walsender of another walhook?); waiting for it to be released",
			ErrSlotActive, s.opts.Slot, slot.ActivePID)
	}
	if fresh {
		*pos = start
		if *pos == 0 {
			*pos = slot.ConfirmedFlushLSN
		}
		s.confirmed.Store(uint64(*pos))
		s.handed.Store(uint64(*pos))
	}
	if s.opts.Durable != nil {
		dctx, cancel := context.WithTimeout(ctx, s.opts.ReceiveTimeout)
		d, ok, err := s.opts.Durable(dctx)
		cancel()
		if err != nil {
			return false, fmt.Errorf("read the consumer's durable position: %w", err)
		}
		if ok && d > *pos {
			// Stored by another process that held the slot meanwhile.
			*pos = d
			s.handed.Store(uint64(d))
			s.Confirm(d)
		}
	}
	// The slot's confirmed_flush_lsn only moves when a consumer confirms.
	// Above what our consumer made durable, someone else consumed the slot
	// (or the store was restored from an older backup): the transactions in
	// between are gone from the slot.
	if durable := LSN(s.confirmed.Load()); slot.ConfirmedFlushLSN > durable {
		return false, fmt.Errorf("%w: cursor %s < confirmed_flush_lsn %s of slot %q: the transactions in between "+
			"can no longer be read, so events for them were lost (the slot was dropped and created again, the source "+
			"failed over, the store was restored from a backup, or another consumer used the slot); "+
			"to accept the gap, run walhook setup --accept-gap (it moves the cursor to %s)",
			ErrCursorBehindSlot, durable, slot.ConfirmedFlushLSN, s.opts.Slot, slot.ConfirmedFlushLSN)
	}
	if durable := LSN(s.confirmed.Load()); slot.WALEnd != 0 && durable > slot.WALEnd {
		return false, &CursorAheadError{Cursor: durable, WALEnd: slot.WALEnd, Slot: s.opts.Slot, SlotLSN: slot.ConfirmedFlushLSN}
	}
	return s.session(ctx, pos)
}

// preflight reads the slot and publication on a normal connection so that
// missing or invalidated objects are reported as such, not as whatever
// START_REPLICATION happens to say.
//
// It is bounded by ReceiveTimeout, as the stream's silence is: a query
// sent on a connection the network drops without a word would wait for
// as long as TCP takes (TestStreamStartBlackholed).
func (s *Stream) preflight(ctx context.Context) (SlotStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReceiveTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, s.sqlCfg)
	if err != nil {
		return SlotStatus{}, fmt.Errorf("connect: %w", err)
	}
	defer closeQuietly(conn)
	if s.opts.SystemID != "" {
		var id string
		if err := conn.QueryRow(ctx, `SELECT system_identifier::text FROM pg_control_system()`).Scan(&id); err != nil {
			return SlotStatus{}, fmt.Errorf("read the server's system identifier: %w", err)
		}
		if id != s.opts.SystemID {
			return SlotStatus{}, fmt.Errorf("%w: the source is now PostgreSQL system %s, not %s as when walhook run started "+
				"(the database moved to another cluster under it: pg_upgrade, a restore, a blue/green switchover) — "+
				"fix: restart walhook run, which then says what the store's cursor of the old system needs "+
				"(walhook setup --accept-new-system, see docs/operations.md, \"Upgrading PostgreSQL or moving the database\")",
				ErrSystemChanged, id, s.opts.SystemID)
		}
	}
	st, err := querySlot(ctx, conn, s.opts.Slot)
	if err != nil {
		return st, err
	}
	if start := s.walsenderStart.Load(); st.Active && st.ActivePID != 0 && uint32(st.ActivePID) == s.walsender.Load() && start != nil {
		if st, err = s.endAbandoned(ctx, conn, st, *start); err != nil {
			return st, err
		}
	}
	var pubExists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, s.opts.Publication).Scan(&pubExists); err != nil {
		return st, fmt.Errorf("look up publication: %w", err)
	}
	if !pubExists {
		return st, fmt.Errorf("%w: publication %q (run `walhook setup`)", ErrPublicationMissing, s.opts.Publication)
	}
	return st, nil
}

// endAbandoned ends the walsender of this stream's own last connection,
// which st finds still holding the slot: the stream gave that connection
// up (ReceiveTimeout) because the network dropped it without a word (a NAT
// or load balancer that forgot it, a link dropping every packet), and the
// server keeps its walsender, and the slot with it, until
// wal_sender_timeout (a minute by default, never when 0) or TCP keepalives
// end it, longer behind a middlebox that answers them
// (TestStreamBlackholedMidStream). pg_terminate_backend is allowed on a
// session of one's own role. The slot's active_pid names the process at
// the moment of the call, and its backend_start must be the one read on
// the stream's last connection: once that walsender is gone its process
// id may be another's, a walsender of another consumer streaming the
// slot (TestStreamDoesNotEndAWalsenderThatReusedItsPID), which is left
// alone.
func (s *Stream) endAbandoned(ctx context.Context, conn *pgx.Conn, st SlotStatus, start string) (SlotStatus, error) {
	var ended bool
	err := conn.QueryRow(ctx, `SELECT coalesce(bool_or(pg_terminate_backend(r.active_pid)), false)
		FROM pg_replication_slots r JOIN pg_stat_activity a ON a.pid = r.active_pid
		WHERE r.slot_name = $1 AND r.active_pid = $2 AND extract(epoch FROM a.backend_start) = $3::numeric`,
		s.opts.Slot, int32(st.ActivePID), start).Scan(&ended)
	if err != nil || !ended {
		// Left to the server's timeouts: the slot is waited for.
		s.log.Debug("end this stream's abandoned walsender", logKeyPID, st.ActivePID, logKeyErr, err)
		return st, nil
	}
	s.log.Info("ended this stream's previous walsender, which still held the slot after its connection was given up",
		logKeyPID, st.ActivePID)
	for {
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return st, ctx.Err()
		case <-t.C:
		}
		next, err := querySlot(ctx, conn, s.opts.Slot)
		if err != nil || !next.Active || next.ActivePID != st.ActivePID {
			return next, err
		}
	}
}

func closeQuietly(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// classify maps server errors of START_REPLICATION and of the running
// stream to the sentinel errors.
func classify(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch {
	case pe.Code == "42704" && containsFold(pe.Message, "replication slot"):
		return fmt.Errorf("%w: %s", ErrSlotMissing, pe.Message)
	case pe.Code == "42704" && containsFold(pe.Message, "publication"):
		// Raised while decoding a change (pgoutput loads the publication
		// with the catalog as it was when the change was written): the
		// publication was dropped, maybe created again since. The server
		// fails on that change on every try, so only a new slot gets past
		// it (TestRunPublicationDroppedAndCreatedAgain).
		if m := associatedLSNRE.FindStringSubmatch(pe.Where); m != nil {
			return fmt.Errorf("%w: %s at the change at %s: the publication did not exist when that change was written "+
				"(it was dropped, and maybe created again since), and PostgreSQL decodes each change with the catalog of "+
				"its time, so this slot cannot get past it, even once the publication exists again; the changes written "+
				"while it was missing were not published — fix: walhook teardown && walhook setup --accept-gap, which "+
				"starts a new slot at the server's current position (the changes between are not sent: check what changed); "+
				"to change a publication, use ALTER PUBLICATION, or DROP and CREATE it in one transaction",
				ErrPublicationMissing, pe.Message, m[1])
		}
		return fmt.Errorf("%w: %s", ErrPublicationMissing, pe.Message)
	case pe.Code == "55000" && (containsFold(pe.Message, "invalidated") || containsFold(pe.Detail, "invalidated") ||
		containsFold(pe.Message, "can no longer get changes")):
		return fmt.Errorf("%w: %s (%s)", ErrSlotLost, pe.Message, pe.Detail)
	case pe.Code == "55006":
		return fmt.Errorf("%w: %s", ErrSlotActive, pe.Message)
	}
	return err
}

// associatedLSNRE finds the position of the change a walsender's error
// arose at, in its CONTEXT ("… in the change callback, associated LSN
// 0/1925000").
var associatedLSNRE = regexp.MustCompile(`associated LSN ([0-9A-F]+/[0-9A-F]+)`)

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
