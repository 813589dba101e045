package cdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// heartbeatPrefix marks walhook's own logical messages; they advance the
// position but are not passed on as changes.
const heartbeatPrefix = "walhook."

// pollInterval bounds how long the receive loop sleeps without looking at
// new confirmations, so a Confirm reaches PostgreSQL promptly even when the
// server is silent (it sends keepalives only every wal_sender_timeout/2).
const pollInterval = 200 * time.Millisecond

// session is one replication connection: its decoder (relation cache) and
// the transaction being assembled live and die with it.
type session struct {
	s    *Stream
	ctx  context.Context
	conn *pgconn.PgConn
	dec  *decoder

	cur      *Tx  // transaction being assembled; nil between Commit and Begin
	position int  // next change position within cur's transaction
	streamed bool // received at least one message

	walEnd       LSN // server WAL end from the last keepalive or XLogData
	serverTime   time.Time
	lastStatus   time.Time
	sentConfirm  LSN
	lastAdvance  time.Time
	readDeadline time.Time
	// heard is when the loop last received a message (or finished handing
	// one on: a consumer that blocks the loop is not the server's silence);
	// asked is set once a reply was requested for the current silence.
	heard time.Time
	asked bool

	sizes  []int  // changes in each of the last len(sizes) values sent
	nsent  uint64 // values sent on txs by this session
	ntaken uint64 // values sent that are known to be taken off txs
	queued int    // changes in the values sent and not known to be taken
}

// session connects, starts replication at *pos and streams until an error
// or ctx is done. *pos follows the last Final Tx handed to the consumer.
func (s *Stream) session(ctx context.Context, pos *LSN) (streamed bool, err error) {
	conn, err := pgconn.ConnectConfig(ctx, s.replCfg)
	if err != nil {
		return false, fmt.Errorf("connect for replication: %w", err)
	}
	s.walsender.Store(conn.PID())
	s.walsenderStart.Store(nil)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	// The walsender's start names it with its process id (endAbandoned).
	// Bounded as START_REPLICATION below; without it, an abandoned
	// walsender is left to the server's timeouts.
	bctx, bcancel := context.WithTimeout(ctx, s.opts.ReceiveTimeout)
	res, err := conn.Exec(bctx, `SELECT extract(epoch FROM backend_start)::text FROM pg_stat_activity WHERE pid = pg_backend_pid()`).ReadAll()
	bcancel()
	if err != nil {
		return false, fmt.Errorf("read the walsender's start: %w", err)
	}
	if len(res) == 1 && len(res[0].Rows) == 1 && len(res[0].Rows[0]) == 1 {
		start := string(res[0].Rows[0][0])
		s.walsenderStart.Store(&start)
	}
	args := []string{
		"proto_version '1'",
		// pgoutput reads a list of identifiers: quoted, the name is taken
		// as written (unquoted, "Walhook" would be folded to walhook, and
		// a blank or a comma refused), as setup created it.
		"publication_names '" + strings.ReplaceAll(`"`+strings.ReplaceAll(s.opts.Publication, `"`, `""`)+`"`, "'", "''") + "'",
		"messages 'true'",
	}
	// Bounded as the stream's silence is (ReceiveTimeout): sent on a
	// connection the network drops without a word, the command would wait
	// for as long as TCP takes, forever behind a middlebox that keeps the
	// socket open (TestStreamStartBlackholed).
	sctx, cancel := context.WithTimeout(ctx, s.opts.ReceiveTimeout)
	err = pglogrepl.StartReplication(sctx, conn, s.opts.Slot, *pos, pglogrepl.StartReplicationOptions{PluginArgs: args})
	cancel()
	if err != nil {
		return false, fmt.Errorf("start replication at %s: %w", *pos, classify(err))
	}
	s.setState(StateStreaming, nil)
	// As text, as every other "lsn" walhook logs: slog's JSON handler
	// would write an LSN as a number.
	s.log.Info("replication started", logKeyLSN, pos.String())

	// Cancelling ctx interrupts a blocked read: the loop then sees ctx.Err.
	stop := context.AfterFunc(ctx, func() { _ = conn.Conn().SetReadDeadline(time.Now()) })
	defer stop()

	ss := &session{s: s, ctx: ctx, conn: conn, dec: newDecoder(newTypeMap()), walEnd: *pos, lastStatus: time.Now(),
		heard: time.Now(), sizes: make([]int, cap(s.txs))}
	ss.sentConfirm = LSN(s.confirmed.Load())
	err = ss.loop()
	*pos = LSN(s.handed.Load())
	if ctx.Err() != nil {
		// Best effort: tell the server what the consumer made durable
		// before we go, so a restart replays as little as possible.
		_ = ss.sendStatus(false)
		return ss.streamed, ctx.Err()
	}
	return ss.streamed, err
}

func (ss *session) loop() error {
	for {
		now := time.Now()
		if now.Add(pollInterval / 2).After(ss.readDeadline) {
			ss.readDeadline = now.Add(pollInterval)
			_ = ss.conn.Conn().SetReadDeadline(ss.readDeadline)
			if ss.ctx.Err() != nil { // cancelled before the deadline was set
				return ss.ctx.Err()
			}
		}
		msg, err := ss.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ss.ctx.Err() != nil {
				return ss.ctx.Err()
			}
			if pgconn.Timeout(err) {
				if err := ss.silence(time.Now()); err != nil {
					return err
				}
				if err := ss.periodic(time.Now()); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := ss.copyData(msg.Data, now); err != nil {
				return err
			}
			ss.heard, ss.asked = time.Now(), false
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", classify(pgconn.ErrorResponseToPgError(msg)))
		case *pgproto3.CopyDone:
			return errors.New("replication stream: server ended the stream (CopyDone)")
		case *pgproto3.CommandComplete:
			// How a walsender ends in a shutdown of the server, once we
			// confirmed all it sent.
			return errors.New("replication stream: the server ended the stream (it is shutting down)")
		case *pgproto3.NoticeResponse:
		default:
			return fmt.Errorf("replication stream: unexpected %T", msg)
		}
		if err := ss.periodic(now); err != nil {
			return err
		}
	}
}

// silence ends the session when the server has sent nothing for
// ReceiveTimeout, after asking it for a reply halfway: a walsender always
// answers one, so the connection or the server is gone (a frozen host, a
// network dropping packets), and Run connects again.
func (ss *session) silence(now time.Time) error {
	quiet := now.Sub(ss.heard)
	switch {
	case quiet >= ss.s.opts.ReceiveTimeout:
		return fmt.Errorf("receive: the server sent nothing for %s, not even the reply asked for: the connection or the server is gone",
			quiet.Round(time.Second))
	case quiet >= ss.s.opts.ReceiveTimeout/2 && !ss.asked:
		ss.asked = true
		return ss.sendStatus(true)
	}
	return nil
}

func (ss *session) copyData(data []byte, now time.Time) error {
	if len(data) == 0 {
		return &ProtocolError{Detail: "empty CopyData"}
	}
	ss.streamed = true
	ss.s.lastMessageAt.Store(now.UnixNano())
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return &ProtocolError{Detail: err.Error()}
		}
		return ss.keepalive(ka, now)
	case pglogrepl.XLogDataByteID:
		if len(data) < 25 {
			return &ProtocolError{Detail: fmt.Sprintf("short XLogData (%d bytes)", len(data))}
		}
		walStart := LSN(be64(data[1:]))
		if end := LSN(be64(data[9:])); end > ss.walEnd {
			ss.walEnd = end
		}
		if err := ss.handle(walStart, data[25:]); err != nil {
			var pe *ProtocolError
			if errors.As(err, &pe) && pe.LSN == 0 {
				pe.LSN = walStart
			}
			return err
		}
		return nil
	}
	return &ProtocolError{Detail: fmt.Sprintf("unknown replication message %q", data[0])}
}

func be64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// keepalive answers a keepalive that asks for it and, when the consumer has
// confirmed everything handed out, hands out the server's WAL end as a
// position advance. The walsender reports its sent position: every
// transaction that committed below it has already been sent (or was
// filtered out by the publication), so confirming it skips nothing, and the
// slot retains no WAL for an idle or filtered database.
//
// Advances are paced by StatusInterval (each one is a store commit),
// except for a keepalive that asks for a reply: a walsender asks when it
// has not heard from us for half its timeout, and, in a loop, when the
// server shuts down, where it exits only once its sent position (past the
// shutdown checkpoint) is confirmed, and the postmaster waits for it. At
// most one advance is outstanding (confirmed >= handed), so the loop
// brings one.
func (ss *session) keepalive(ka pglogrepl.PrimaryKeepaliveMessage, now time.Time) error {
	if ka.ServerWALEnd > ss.walEnd {
		ss.walEnd = ka.ServerWALEnd
	}
	ss.serverTime = ka.ServerTime
	if ka.ReplyRequested {
		if err := ss.sendStatus(false); err != nil {
			return err
		}
	}
	if ss.cur == nil && ss.sentConfirm != 0 && ka.ServerWALEnd <= ss.sentConfirm {
		// Nothing the server sent is unconfirmed, and no transaction is
		// being read (a walsender sending a large one reports the
		// position before its commit): WAL unconfirmed later was written
		// after now, and its lag counts from here, not from the last new
		// confirmation, which on an idle source (heartbeats off) is as
		// old as the quiet spell.
		ss.s.caughtUpAt.Store(now.UnixNano())
	}
	handed := LSN(ss.s.handed.Load())
	if ss.cur == nil && LSN(ss.s.confirmed.Load()) >= handed && ka.ServerWALEnd > handed &&
		(ka.ReplyRequested || now.Sub(ss.lastAdvance) >= ss.s.opts.StatusInterval) {
		ss.lastAdvance = now
		return ss.emit(&Tx{CommitLSN: ka.ServerWALEnd, EndLSN: ka.ServerWALEnd, CommitTime: ka.ServerTime.UTC(), Final: true})
	}
	return nil
}

// handle processes one pgoutput message.
func (ss *session) handle(walStart LSN, b []byte) error {
	if len(b) == 0 {
		return &ProtocolError{Detail: "empty pgoutput message"}
	}
	switch b[0] {
	case msgBegin:
		m, err := decodeBegin(b)
		if err != nil {
			return err
		}
		if ss.cur != nil {
			return protoErr("Begin of xid %d inside xid %d", m.Xid, ss.cur.Xid)
		}
		ss.cur = &Tx{Xid: m.Xid, CommitLSN: m.FinalLSN, CommitTime: m.CommitTime.UTC(), Changes: make([]Change, 0, 4)}
		ss.position = 0
	case msgCommit:
		m, err := decodeCommit(b)
		if err != nil {
			return err
		}
		if ss.cur == nil {
			return protoErr("Commit at %s outside a transaction", m.CommitLSN)
		}
		if m.CommitLSN != ss.cur.CommitLSN {
			return protoErr("Commit LSN %s differs from Begin's final LSN %s", m.CommitLSN, ss.cur.CommitLSN)
		}
		tx := ss.cur
		ss.cur = nil
		tx.EndLSN, tx.Final = m.EndLSN, true
		return ss.emit(tx)
	case msgOrigin:
		name, err := decodeOrigin(b)
		if err != nil {
			return err
		}
		if ss.cur != nil {
			ss.cur.Origin = name
		}
	case msgRelation:
		rel, err := ss.dec.relation(b)
		if err != nil {
			return err
		}
		return ss.resolveDomains(rel)
	case msgType:
		return ss.dec.typ(b)
	case msgInsert, msgUpdate, msgDelete, msgTruncate:
		if ss.cur == nil {
			return protoErr("%q change outside a transaction", b[0])
		}
		c, err := ss.next()
		if err != nil {
			return err
		}
		if b[0] == msgTruncate {
			err = ss.dec.truncate(b, c)
		} else {
			err = ss.dec.change(b, c)
		}
		if err != nil {
			return err
		}
		c.LSN = walStart
	case msgMessage:
		var c Change
		transactional, err := decodeMessage(b, &c)
		if err != nil {
			return err
		}
		// Non-transactional messages are not part of any transaction and
		// have no commit to confirm; walhook does not pass them on.
		if !transactional || ss.cur == nil || strings.HasPrefix(c.Prefix, heartbeatPrefix) {
			return nil
		}
		next, err := ss.next()
		if err != nil {
			return err
		}
		c.Position = next.Position
		*next = c
	default:
		return protoErr("unknown pgoutput message type %q (walhook speaks protocol version 1)", b[0])
	}
	return nil
}

// next appends an empty change to the current chunk and returns it. A
// full chunk is handed over first — only when another change follows, so
// the last chunk of a transaction is always the Final one. The server
// decodes a transaction only once it committed and Begin carries the commit
// LSN, so every chunk already knows Xid, CommitLSN and CommitTime; only the
// final chunk (sent at Commit) carries EndLSN.
func (ss *session) next() (*Change, error) {
	if len(ss.cur.Changes) >= ss.s.opts.MaxChunkChanges {
		chunk := ss.cur
		next := *chunk
		next.Chunk++
		next.Changes = make([]Change, 0, ss.s.opts.MaxChunkChanges)
		ss.cur = &next
		if err := ss.emit(chunk); err != nil {
			return nil, err
		}
	}
	ss.cur.Changes = append(ss.cur.Changes, Change{Position: ss.position})
	ss.position++
	return &ss.cur.Changes[len(ss.cur.Changes)-1], nil
}

// emit hands tx to the consumer. While the channel is full, or holds
// MaxBufferedChanges changes already, it keeps the connection alive: status
// updates (with whatever the consumer has confirmed, never more) go out so
// the walsender does not time us out. Keepalives queue up on the socket
// meanwhile; the server only needs to hear from us within
// wal_sender_timeout.
func (ss *session) emit(tx *Tx) error {
	var t *time.Timer
	for {
		// Only the consumer changes len(txs), and only downwards: once a
		// chunk fits it keeps fitting.
		fits := len(ss.s.txs) == 0 || ss.buffered()+len(tx.Changes) <= ss.s.opts.MaxBufferedChanges
		if fits {
			select {
			case ss.s.txs <- tx:
				return ss.sent(tx)
			default:
			}
		}
		// Not fitting by size is polled (the channel cannot tell us when
		// the consumer takes a chunk); a full channel is waited on.
		wait, send := budgetPoll, chan<- *Tx(nil)
		if fits {
			wait, send = pollInterval, ss.s.txs
		}
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case send <- tx:
			return ss.sent(tx)
		case <-ss.ctx.Done():
			return ss.ctx.Err()
		case now := <-t.C:
			if err := ss.periodic(now); err != nil {
				return err
			}
		}
	}
}

// budgetPoll is how often emit looks whether the consumer has taken enough
// changes off the channel to make room for the next chunk.
const budgetPoll = 2 * time.Millisecond

// sent records what went on the channel. The channel is FIFO with one
// sender, so the len(txs) values in it are the last len(txs) ones sent.
func (ss *session) sent(tx *Tx) error {
	l := uint64(len(ss.sizes))
	// With tx in the channel, at most len(sizes) - 1 earlier values can
	// be too: the one whose slot tx takes over has been taken.
	if ss.nsent >= l {
		ss.take(ss.nsent - l + 1)
	}
	ss.sizes[ss.nsent%l] = len(tx.Changes)
	ss.queued += len(tx.Changes)
	ss.nsent++
	if tx.Final {
		ss.s.handed.Store(uint64(tx.EndLSN))
	}
	ss.s.nhanded.Add(1)
	return nil
}

// take notes that the first n values sent have been taken.
func (ss *session) take(n uint64) {
	for ; ss.ntaken < n; ss.ntaken++ {
		ss.queued -= ss.sizes[ss.ntaken%uint64(len(ss.sizes))]
	}
}

// buffered is the number of changes waiting in the channel, from this
// session (amortised O(1)). Only the consumer changes len(txs), and only
// downwards, so all but the last len(txs) values sent have been taken.
func (ss *session) buffered() int {
	if n := uint64(len(ss.s.txs)); n < ss.nsent {
		ss.take(ss.nsent - n)
	}
	return ss.queued
}
