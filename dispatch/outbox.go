package dispatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

// TxEvents are the events of one transaction (or one chunk of a large one).
// Only a Final chunk carries EndLSN, and only Final chunks move the cursor:
// the transaction is confirmed once all its chunks are durable. A Final
// TxEvents without Events is a position advance (heartbeat, idle WAL end).
type TxEvents struct {
	Xid        uint32
	CommitLSN  cdc.LSN
	EndLSN     cdc.LSN
	Final      bool
	CommitTime time.Time
	Events     []mapper.Event
}

// fanoutEndpoint is an endpoint as the fan-out sees it.
type fanoutEndpoint struct {
	id       string
	events   []string
	auctions []string
	active   bool
	// What a delivery handed straight to a worker needs.
	url, secret, prevSecret string
	prevSecretUntil         time.Time // zero when there is no previous secret
}

// endpointCache is the fan-out's copy of the endpoints, valid while the
// store's endpoints_version row is at version and was last written by
// transaction xmin (migration 007): a store dropped and set up again
// starts counting at 1 again, in a row another transaction wrote. Its
// slice is replaced, never changed in place: handed deliveries point into
// it.
//
// When the version moved, only the endpoints changed since are read
// (migration 008: each row carries the version that last changed it),
// unless one was deleted since (deleted_version) or the store is another
// one (epoch): then all of them are.
type endpointCache struct {
	mu            sync.Mutex
	version, xmin int64
	epoch         string
	set           *fanoutSet
}

// fanoutSet is the endpoints as one version of them has them, indexed by
// auction filter: with thousands of endpoints, each subscribed to a few
// auctions, an event is matched against the endpoints of its auction and
// those without an auction filter, not against every endpoint (matching
// each event against 5,000 filters made an Append of 100 events 2.5 times
// as slow as with one endpoint).
type fanoutSet struct {
	eps []fanoutEndpoint
	// anyAuction: the endpoints without an auction filter; byAuction: by
	// each auction in a filter. Indexes into eps, ascending.
	anyAuction []int32
	byAuction  map[string][]int32
	// pos: id → index into eps.
	pos map[string]int32
}

func newFanoutSet(eps []fanoutEndpoint) *fanoutSet {
	s := &fanoutSet{eps: eps, byAuction: map[string][]int32{}, pos: make(map[string]int32, len(eps))}
	for i := range eps {
		s.pos[eps[i].id] = int32(i)
		if len(eps[i].auctions) == 0 {
			s.anyAuction = append(s.anyAuction, int32(i))
			continue
		}
		for _, a := range eps[i].auctions {
			if a == "" {
				continue // matches no event (matchAuction)
			}
			l := s.byAuction[a]
			if len(l) > 0 && l[len(l)-1] == int32(i) {
				continue // listed twice in one filter
			}
			s.byAuction[a] = append(l, int32(i))
		}
	}
	return s
}

// each calls f for every endpoint whose auction filter lets ev through,
// in the endpoints' order (by id); f applies the other filters.
func (s *fanoutSet) each(ev *mapper.Event, f func(ep *fanoutEndpoint)) {
	a := s.anyAuction
	var b []int32
	if ev.AuctionID != "" {
		b = s.byAuction[ev.AuctionID]
	}
	for len(a) > 0 || len(b) > 0 {
		var i int32
		if len(b) == 0 || (len(a) > 0 && a[0] < b[0]) {
			i, a = a[0], a[1:]
		} else {
			i, b = b[0], b[1:]
		}
		f(&s.eps[i])
	}
}

// matches applies the endpoint's filters: events exact or "prefix.*" (and
// "*"), empty = all; auctions exact, empty = all (an event without an
// auction id matches only an empty auction filter).
func (e *fanoutEndpoint) matches(ev *mapper.Event) bool {
	return matchEvent(e.events, ev.Type) && matchAuction(e.auctions, ev.AuctionID)
}

func matchEvent(filters []string, typ string) bool {
	if len(filters) == 0 {
		return true
	}
	for _, f := range filters {
		if f == typ || f == "*" {
			return true
		}
		if p, ok := strings.CutSuffix(f, "*"); ok && strings.HasSuffix(p, ".") && strings.HasPrefix(typ, p) {
			return true
		}
	}
	return false
}

func matchAuction(filters []string, auction string) bool {
	if len(filters) == 0 {
		return true
	}
	for _, f := range filters {
		if f == auction && auction != "" {
			return true
		}
	}
	return false
}

// Append is the durability point. In one store transaction it inserts the
// events (ON CONFLICT DO NOTHING: ids are deterministic, so a replay after a
// crash inserts nothing new), fans each out to every matching endpoint
// (deliveries 'pending', or 'skipped' for disabled endpoints) and moves the
// cursor of slot to the highest Final EndLSN in txs, never backwards. Only
// after Append returns nil may cdc confirm that LSN.
//
// The endpoints are read as of this transaction (fanoutEndpoints, under a
// share lock on endpoints_version): an endpoint created, changed or
// disabled by the API of another walhook process is seen, and one being
// deleted is either waited for (then skipped) or kept until this commit,
// and its tombstone then has the deliveries written here deleted too
// (purgeDeleted).
//
// Rows go in as arrays through unnest, one statement per table, so the cost
// is two round trips whatever the batch size (BEGIN with the endpoints
// version; the inserts, the cursor and COMMIT pipelined).
//
// While this process's claim loop runs and has room, Append stores the
// deliveries it has room for as already claimed by this process (the
// first attempt counted, leased as a claim would) and hands them to the
// loop after the commit: a fresh delivery then costs no claim statement
// and no claim round trip. What the loop has no room for is stored
// pending, for any process to claim. A crash after the commit leaves the
// handed deliveries leased, and the lease rescue sends them, as it does
// for any claim.
func (d *Dispatcher) Append(ctx context.Context, slot, systemID string, txs []TxEvents) error {
	start := time.Now()
	var ev eventRows
	var dl deliveryRows
	var endLSN cdc.LSN
	var final bool
	for i := range txs {
		t := &txs[i]
		if t.Final {
			final = true
			endLSN = max(endLSN, t.EndLSN)
		}
		for j := range t.Events {
			ev.add(t, &t.Events[j])
		}
	}
	if len(ev.id) == 0 && !final {
		return nil
	}
	pending := 0
	res := d.hold.reserve()
	at := time.Now()
	var taken map[string]handed // by delivery id
	var cs []claimed
	defer func() { res.handoff(cs) }()
	// Two round trips: BEGIN with the endpoints version, then the inserts,
	// the cursor and COMMIT in one pipeline (a third only when the
	// endpoints changed). On an error the store reports (or a failed
	// COMMIT) nothing of the batch is committed: the connection is left
	// inside the failed transaction, and the pool closes such a
	// connection on release instead of reusing it. An error on the client
	// side (ctx ending, the network) after the pipeline was sent is not
	// that: the store already has COMMIT and may still run it, even after
	// Append returned. Such a failure may thus have committed; that is
	// safe because the caller replays the same batch (same ids, ON
	// CONFLICT DO NOTHING, a cursor that never goes back) and cs is
	// cleared, so nothing stored here is handed: the lease rescue sends it.
	err := d.pool.AcquireFunc(ctx, func(pc *pgxpool.Conn) error {
		conn := pc.Conn()
		begun := false
		if len(ev.id) > 0 {
			set, now, err := d.fanout(ctx, conn, true)
			if err != nil {
				return err
			}
			begun = true
			for i := range txs {
				for j := range txs[i].Events {
					e := &txs[i].Events[j]
					set.each(e, func(ep *fanoutEndpoint) {
						if !ep.matches(e) {
							return
						}
						status := "skipped"
						switch {
						case !ep.active:
						case res.take(ep.id):
							status = "delivering"
						case res.failing(ep.id):
							// Claimed within the failing endpoints'
							// share, at the poll: no wake-up (every
							// event to a dead endpoint woke a claim
							// that had nothing to take).
							status = "pending"
						default:
							status = "pending"
							pending++
						}
						id := dl.add(e, ep, status)
						if status == "delivering" {
							if taken == nil {
								taken = map[string]handed{}
							}
							taken[id] = handed{ev: e, ep: ep, prevValid: ep.prevSecretUntil.After(now)}
						}
					})
				}
			}
		}
		b := &pgx.Batch{}
		if !begun {
			b.Queue("BEGIN")
		}
		b.Queue(durableCommitSQL)
		parts := ev.parts(d.opts.insertBytes)
		for _, p := range parts {
			i, j := p[0], p[1]
			b.Queue(d.q(insertEventsSQL), ev.id[i:j], ev.typ[i:j], ev.auction[i:j], ev.domain[i:j], ev.envelope[i:j],
				ev.occurred[i:j], ev.data[i:j], ev.table[i:j], ev.xid[i:j], ev.commitLSN[i:j], ev.position[i:j])
		}
		if len(dl.id) > 0 {
			b.Queue(d.q(insertDeliveriesSQL), dl.id, dl.event, dl.endpoint, dl.typ, dl.status,
				d.opts.InstanceID, d.opts.Lease.Seconds())
		}
		floor := d.cursorFloor(slot)
		if final {
			if floor > 0 {
				b.Queue(d.q(cursorKeptSQL), slot, floor.String())
			}
			b.Queue(d.q(advanceCursorSQL), slot, systemID, endLSN.String())
		}
		if pending > 0 {
			// pg_notify inside the transaction is delivered at commit, and
			// only if it commits: listeners never wake for rows they
			// cannot see yet.
			b.Queue(`SELECT pg_notify($1, '')`, d.channel)
		}
		b.Queue("COMMIT")
		br := conn.SendBatch(ctx, b)
		if !begun {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return err
			}
		}
		if _, err := br.Exec(); err != nil { // durableCommitSQL
			br.Close()
			return err
		}
		if err := d.readAppend(br, len(parts), len(dl.id) > 0, taken, at, &cs); err != nil {
			br.Close()
			return err
		}
		// The cursor check's, the cursor's and the notify's results, when
		// queued.
		for i, queued := range []bool{final && floor > 0, final, pending > 0} {
			if !queued {
				continue
			}
			if _, err := br.Exec(); err != nil {
				br.Close()
				if pe := (*pgconn.PgError)(nil); i == 0 && errors.As(err, &pe) && pe.Code == "22012" {
					return &CursorWentBackError{Slot: slot, Kept: floor}
				}
				return err
			}
		}
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return err
		}
		if err := br.Close(); err != nil {
			return err
		}
		if tag.String() != "COMMIT" || conn.PgConn().TxStatus() != 'I' {
			return fmt.Errorf("commit: the store answered %q", tag.String())
		}
		return nil
	})
	if err != nil {
		cs = nil
		if cw := (*CursorWentBackError)(nil); errors.As(err, &cw) {
			cw.Found, cw.Missing = d.cursorNow(ctx, slot)
		}
		return fmt.Errorf("append %d events to the outbox: %w", len(ev.id), err)
	}
	if final {
		d.keepCursor(slot, endLSN, false)
	}
	d.metrics.appendEvents.Observe(float64(len(ev.id)))
	d.metrics.appendLatency.Observe(time.Since(start).Seconds())
	if pending > 0 {
		d.Notify()
	}
	return nil
}

// fanoutEndpoints returns the endpoints as of tx (which it begins first
// when begin is set, in the same round trip), and tx's now() (which a
// previous secret's overlap is measured against). It locks the one
// endpoints_version row FOR SHARE: a transaction that changes endpoints
// (their triggers update that row) is waited for, and the next one waits
// until tx commits, so the endpoints cannot change under the fan-out and
// one being deleted is either gone or kept until this commit (its
// deliveries written here are then deleted with the rest: purgeDeleted).
// The rows are read again only when the version moved.
func (d *Dispatcher) fanoutEndpoints(ctx context.Context, tx *pgx.Conn, begin bool) ([]fanoutEndpoint, time.Time, error) {
	set, now, err := d.fanout(ctx, tx, begin)
	if err != nil {
		return nil, now, err
	}
	return set.eps, now, nil
}

// fanout is fanoutEndpoints with the auction index.
func (d *Dispatcher) fanout(ctx context.Context, tx *pgx.Conn, begin bool) (*fanoutSet, time.Time, error) {
	var version, xmin, deleted int64
	var epoch string
	var now time.Time
	b := &pgx.Batch{}
	if begin {
		b.Queue("BEGIN")
	}
	b.Queue(d.q(`SELECT version, xmin::text::bigint, now(), epoch::text, deleted_version FROM {{schema}}.endpoints_version FOR SHARE`)).
		QueryRow(func(r pgx.Row) error { return r.Scan(&version, &xmin, &now, &epoch, &deleted) })
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, now, fmt.Errorf("read endpoints version: %w", err)
	}
	c := &d.endpoints
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.set != nil && c.version == version && c.xmin == xmin && c.epoch == epoch {
		return c.set, now, nil
	}
	if c.set != nil && c.epoch == epoch && version > c.version && deleted <= c.version {
		// Only what changed since: the others are as the cache has them.
		changed, err := d.readEndpoints(ctx, tx, c.version, version)
		if err != nil {
			return nil, now, err
		}
		eps := slices.Clone(c.set.eps)
		added := false
		for _, e := range changed {
			if i, ok := c.set.pos[e.id]; ok {
				eps[i] = e
			} else {
				eps = append(eps, e)
				added = true
			}
		}
		if added {
			slices.SortFunc(eps, func(a, b fanoutEndpoint) int { return strings.Compare(a.id, b.id) })
		}
		c.version, c.xmin, c.set = version, xmin, newFanoutSet(eps)
		return c.set, now, nil
	}
	eps, err := d.readEndpoints(ctx, tx, -1, version)
	if err != nil {
		return nil, now, err
	}
	if eps == nil {
		eps = []fanoutEndpoint{}
	}
	c.version, c.xmin, c.epoch, c.set = version, xmin, epoch, newFanoutSet(eps)
	return c.set, now, nil
}

// readEndpoints reads the endpoints changed after version after (all of
// them with -1), up to version upTo (the one this transaction holds FOR
// SHARE: none is past it), in id order. Bounded on both sides, the
// range's generic plan reads through endpoints_changed_version (one bound
// only, PostgreSQL guesses a third of the table and reads all of it).
func (d *Dispatcher) readEndpoints(ctx context.Context, tx *pgx.Conn, after, upTo int64) ([]fanoutEndpoint, error) {
	const cols = `SELECT id, events, auctions, active, url, secret, coalesce(previous_secret, ''), previous_secret_until
		FROM {{schema}}.endpoints`
	var rows pgx.Rows
	var err error
	if after < 0 {
		rows, err = tx.Query(ctx, d.q(cols+` ORDER BY id`))
	} else {
		rows, err = tx.Query(ctx, d.q(cols+` WHERE changed_version > $1 AND changed_version <= $2 ORDER BY id`), after, upTo)
	}
	if err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	eps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fanoutEndpoint, error) {
		var e fanoutEndpoint
		var until *time.Time
		err := r.Scan(&e.id, &e.events, &e.auctions, &e.active, &e.url, &e.secret, &e.prevSecret, &until)
		if until != nil {
			e.prevSecretUntil = *until
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	return eps, nil
}

const insertEventsSQL = `
INSERT INTO {{schema}}.events (id, type, auction_id, domain, envelope, occurred_at, data, table_name, xid, commit_lsn, position)
SELECT id, type, NULLIF(auction_id, ''), NULLIF(domain, ''), envelope, occurred_at, data::json, NULLIF(table_name, ''), xid, commit_lsn::pg_lsn, position
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::int[])
     AS t(id, type, auction_id, domain, envelope, occurred_at, data, table_name, xid, commit_lsn, position)
ON CONFLICT (id) DO NOTHING`

// insertDeliveriesSQL stores deliveries pending, skipped, or claimed by
// this process ($6, leased for $7 seconds, the first attempt counted), and
// returns the claimed ones it inserted: a replayed delivery that is in the
// store already is left as it is, and not handed to a worker.
const insertDeliveriesSQL = `
WITH ins AS (
    INSERT INTO {{schema}}.deliveries (id, event_id, endpoint_id, event_type, status, attempts, locked_by, locked_until)
    SELECT id, event_id, endpoint_id, event_type, status,
        CASE WHEN status = 'delivering' THEN 1 ELSE 0 END,
        CASE WHEN status = 'delivering' THEN $6 END,
        CASE WHEN status = 'delivering' THEN now() + make_interval(secs => $7) END
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS t(id, event_id, endpoint_id, event_type, status)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, status, locked_until
)
SELECT id, locked_until FROM ins WHERE status = 'delivering'`

// durableCommitSQL makes the append's COMMIT wait for its WAL flush on a
// store whose default is synchronous_commit = off (postgresql.conf, ALTER
// DATABASE or ROLE, the DSN's options): the slot is confirmed once Append
// returns, so a commit the store's crash could still take back would lose
// the transactions' events for good. Other settings (local, remote_write,
// on, remote_apply) are the store's choice and are kept.
const durableCommitSQL = `SELECT CASE WHEN current_setting('synchronous_commit') = 'off'
	THEN set_config('synchronous_commit', 'on', true) END`

// cursorKeptSQL fails (division by zero, which aborts the append's
// transaction before its COMMIT) unless slot's cursor is at $2 or past
// it: a cursor found behind what this process found or stored there, or
// gone, means the store lost transactions it had committed (see
// CursorWentBackError). Past it is fine: another process that led
// meanwhile stored more.
const cursorKeptSQL = `SELECT 1 / (SELECT count(*)::int FROM {{schema}}.cursor WHERE slot = $1 AND lsn >= $2::pg_lsn)`

// ErrCursorWentBack: the store's cursor is behind what this process
// found or stored there (see CursorWentBackError).
var ErrCursorWentBack = errors.New("the store's cursor went back")

// CursorWentBackError is an Append refused because slot's cursor in the
// store is behind Kept, a position this process found there or stored
// there itself (or the cursor is gone: Missing): the store lost
// transactions it had committed — it was restored from a backup, or it
// failed over to a standby that had not received them. The events and
// deliveries of those transactions may be gone with them, while the
// slot may already be confirmed past them. Moving the cursor forward (it
// never goes back) would cover that gap over for good, so nothing is
// appended: the leader reads the cursor again, and the stream then
// either resumes from it (the slot still holds the changes) or stops
// with the gap error (cdc.ErrCursorBehindSlot) and its fix.
type CursorWentBackError struct {
	Slot    string
	Kept    cdc.LSN // what this process found or stored
	Found   cdc.LSN // what the store has now (0 when unknown or Missing)
	Missing bool
}

func (e *CursorWentBackError) Error() string {
	found := "gone"
	if !e.Missing {
		found = "at " + e.Found.String()
		if e.Found == 0 {
			found = "behind it"
		}
	}
	return fmt.Sprintf("%v: the store's cursor for slot %q is %s, but this walhook stored or found it at %s: the store "+
		"lost transactions it had committed (restored from a backup, or failed over to a standby that was behind), "+
		"with their events and deliveries; nothing was appended, and the leader reads the cursor again: it resumes "+
		"from it while the slot still holds the changes after it, and otherwise stops with the gap and its fix "+
		"(docs/operations.md, Recovering from a gap)", ErrCursorWentBack, e.Slot, found, e.Kept)
}

func (e *CursorWentBackError) Unwrap() error { return ErrCursorWentBack }

// ExpectCursor tells Append where the leader found slot's cursor when its
// term began: from then on Append refuses to move a cursor it finds behind
// that, or behind what it stored since (CursorWentBackError). It replaces
// what an earlier term knew, since a cursor may be moved back on purpose
// while no process leads (setup --accept-gap after a fork). 0 (no cursor
// yet) expects nothing until the first Append stores one.
func (d *Dispatcher) ExpectCursor(slot string, lsn cdc.LSN) { d.keepCursor(slot, lsn, true) }

func (d *Dispatcher) keepCursor(slot string, lsn cdc.LSN, reset bool) {
	d.keptMu.Lock()
	defer d.keptMu.Unlock()
	if d.kept == nil {
		d.kept = map[string]cdc.LSN{}
	}
	if reset || lsn > d.kept[slot] {
		d.kept[slot] = lsn
	}
}

func (d *Dispatcher) cursorFloor(slot string) cdc.LSN {
	d.keptMu.Lock()
	defer d.keptMu.Unlock()
	return d.kept[slot]
}

// cursorNow reads slot's cursor for CursorWentBackError's message.
func (d *Dispatcher) cursorNow(ctx context.Context, slot string) (lsn cdc.LSN, missing bool) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	lsn, _, ok, err := d.Cursor(rctx, slot)
	if err != nil {
		return 0, false
	}
	return lsn, !ok
}

// GREATEST keeps the cursor from going back when an older batch is
// replayed after a newer one was stored.
const advanceCursorSQL = `
INSERT INTO {{schema}}.cursor (slot, system_id, lsn) VALUES ($1, $2, $3::pg_lsn)
ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST({{schema}}.cursor.lsn, EXCLUDED.lsn),
    system_id = EXCLUDED.system_id, updated_at = now()`

// eventRows are events as column arrays for unnest.
type eventRows struct {
	id, typ, auction, domain, envelope []string
	occurred                           []time.Time
	data, table                        []string
	xid                                []int64
	commitLSN                          []string
	position                           []int32
}

// parts splits the rows into index ranges [i, j) whose bodies and data
// take at most max bytes (one row more when a single row is larger), one
// INSERT each: a transaction of large rows, or a batch of many, can hold
// more than the 1 GB PostgreSQL takes in one value and pgx in one message.
func (r *eventRows) parts(max int) [][2]int {
	var out [][2]int
	start, size := 0, 0
	for i := range r.id {
		n := len(r.envelope[i]) + len(r.data[i])
		if i > start && size+n > max {
			out = append(out, [2]int{start, i})
			start, size = i, 0
		}
		size += n
	}
	if start < len(r.id) {
		out = append(out, [2]int{start, len(r.id)})
	}
	return out
}

func (r *eventRows) add(t *TxEvents, e *mapper.Event) {
	data := string(e.Data)
	if data == "" {
		data = "{}"
	}
	r.id = append(r.id, e.ID)
	r.typ = append(r.typ, e.Type)
	r.auction = append(r.auction, e.AuctionID)
	r.domain = append(r.domain, e.Domain)
	r.envelope = append(r.envelope, string(envelopeOf(e)))
	r.occurred = append(r.occurred, e.OccurredAt)
	r.data = append(r.data, data)
	r.table = append(r.table, e.Table)
	r.xid = append(r.xid, int64(t.Xid))
	r.commitLSN = append(r.commitLSN, t.CommitLSN.String())
	r.position = append(r.position, int32(e.Position))
}

// deliveryRows are deliveries as column arrays for unnest.
type deliveryRows struct {
	id, event, endpoint, typ, status []string
}

// add records the delivery of e to ep with status and returns its id.
func (r *deliveryRows) add(e *mapper.Event, ep *fanoutEndpoint, status string) string {
	id := mapper.DeliveryID(envelopeOf(e), e.ID, ep.id)
	r.id = append(r.id, id)
	r.event = append(r.event, e.ID)
	r.endpoint = append(r.endpoint, ep.id)
	r.typ = append(r.typ, e.Type)
	r.status = append(r.status, status)
	return id
}

// envelopeOf is the event's body shape; events without one are stored
// with the Auction Excellence shape.
func envelopeOf(e *mapper.Event) mapper.Envelope {
	if e.Envelope == "" {
		return mapper.EnvelopeAuctionExcellence
	}
	return e.Envelope
}

// handed is a delivery Append reserved for this process's workers.
type handed struct {
	ev *mapper.Event
	ep *fanoutEndpoint
	// prevValid: the endpoint's previous secret still signs (as of the
	// append's now()).
	prevValid bool
}

// readAppend reads the results of Append's batch, in the order queued,
// and collects the claimed deliveries the insert returned into cs.
func (d *Dispatcher) readAppend(br pgx.BatchResults, eventInserts int, deliveries bool, taken map[string]handed, at time.Time, cs *[]claimed) error {
	for range eventInserts {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	if !deliveries {
		return nil
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	var id string
	var lease time.Time
	_, err = pgx.ForEachRow(rows, []any{&id, &lease}, func() error {
		h, ok := taken[id]
		if !ok {
			return fmt.Errorf("the insert returned delivery %s, which was not taken for this process", id)
		}
		c := h.claimed(id)
		c.at, c.handed, c.lease = at, true, lease
		*cs = append(*cs, c)
		return nil
	})
	return err
}

// claimed returns the delivery as a claim would have returned it: the
// event as it reads back from the store (UTC, microseconds, the default
// envelope and data filled in), so a retry sends the same body.
func (h handed) claimed(id string) claimed {
	e := *h.ev
	e.Envelope = envelopeOf(&e)
	if len(e.Data) == 0 {
		e.Data = []byte("{}")
	}
	e.OccurredAt = e.OccurredAt.UTC().Truncate(time.Microsecond)
	return claimed{id: id, endpointID: h.ep.id, url: h.ep.url, attempt: 1,
		secret: h.ep.secret, prevSecret: h.ep.prevSecret, prevSecretValid: h.prevValid, event: e}
}

// HandoffRoom returns how many deliveries the next Append could hand
// straight to this process's workers, waiting for room for want of them
// (or an eighth of the most there can be, if less) to free up for as long
// as that room keeps growing: it gives up once it has not grown for wait
// (an endpoint that hangs), not after wait in all, so workers that are
// slow but moving (a busy or shared machine) keep being paced. It
// returns 0 at once when no claim loop runs here.
//
// The replication consumer uses it while it has a backlog: rather than
// store the backlog pending, for the workers to claim back one batch at a
// time, it stores what the workers are about to be free for and hands it
// over, which saves each delivery its claim.
//
// ok reports whether the room was there in time; it is false at once when
// no claim loop runs here.
func (d *Dispatcher) HandoffRoom(ctx context.Context, want int, wait time.Duration) (room int, ok bool) {
	var timer *time.Timer
	best := 0
	for {
		room, most, freed := d.hold.room()
		if freed == nil {
			return 0, false
		}
		if room >= min(want, max(most/handoffMinShare, 1)) {
			return room, true
		}
		switch {
		case timer == nil:
			timer = time.NewTimer(wait)
			defer timer.Stop()
			best = room
		case room > best:
			// Progress: the wait starts again (since Go 1.23 Reset
			// leaves no stale tick in timer.C). Room freed at other
			// endpoints while the fullest one hangs is not progress:
			// the room is bounded by the fullest.
			timer.Reset(wait)
			best = room
		}
		select {
		case <-ctx.Done():
			return room, false
		case <-timer.C:
			// The wait may have ended while this goroutine waited for a
			// CPU, with room freed meanwhile (select then picks either
			// ready case): it gives up only if the room has not grown.
			// The wait starts again here, as for any progress: the timer
			// has fired, and the room read at the top of the loop may be
			// back to best (a claim took what was freed), which would
			// leave nothing to end the wait while the fullest endpoint
			// hangs.
			if now, _, _ := d.hold.room(); now > best {
				best = now
				timer.Reset(wait)
				continue
			}
			return room, false
		case <-freed:
		}
	}
}

// handoffMinShare: HandoffRoom waits for at least 1/handoffMinShare of the
// handoff room to be free. Waiting for half of it left the workers idle
// while the Append that refilled them ran (6,500–6,900 deliveries/s on
// the saturation bench against 7,300–8,100 with an eighth); waiting for
// less makes more and smaller Appends.
const handoffMinShare = 8
