package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// A cycle is the life of one member's work in an auction, as seed 000
// describes it, written as 20 single-statement transactions. Every step
// produces exactly one event under testdata/auction-excellence/walhook.yaml,
// so N changes make N deliveries to one endpoint; messages and submissions
// dominate, as they would in a live auction. Every event's data carries the
// row id, which is how the latency measure matches a delivery to its commit.
type cycle struct {
	member, sub, sub2, insp, defect, problem, channel string
	msg                                               [7]string
	n                                                 int // cycle number, for lot numbers and emails
}

type step struct {
	event string
	id    func(c *cycle) string
	sql   string
	args  func(c *cycle) []any
}

const msgBody = "Lot recounted after the morning session: all items present, two boxes moved to the inspection table."

var steps = []step{
	{"member.invited", func(c *cycle) string { return c.member },
		`INSERT INTO members (id, auction_id, email, display_name, role, invited_by) VALUES ($1, $2, $3, 'Counter', 'counter', $4)`,
		func(c *cycle) []any {
			return []any{c.member, auctionID, "counter-" + c.member + "@example.com", ownerID}
		}},
	{"member.joined", func(c *cycle) string { return c.member },
		`UPDATE members SET accepted_at = now(), user_id = gen_random_uuid() WHERE id = $1`,
		func(c *cycle) []any { return []any{c.member} }},
	{"submission.created", func(c *cycle) string { return c.sub },
		`INSERT INTO lot_submissions (id, auction_id, member_id, lot_number, item_count, notes) VALUES ($1, $2, $3, $4, 10, 'first count')`,
		func(c *cycle) []any { return []any{c.sub, auctionID, c.member, 2*c.n + 1} }},
	{"submission.updated", func(c *cycle) string { return c.sub },
		`UPDATE lot_submissions SET item_count = item_count + 2, notes = 'recounted', updated_at = now() WHERE id = $1`,
		func(c *cycle) []any { return []any{c.sub} }},
	{"inspection.created", func(c *cycle) string { return c.insp },
		`INSERT INTO inspections (id, auction_id, submission_id, inspector_id, grade, notes) VALUES ($1, $2, $3, $4, 'B', 'minor wear on two items')`,
		func(c *cycle) []any { return []any{c.insp, auctionID, c.sub, ownerID} }},
	{"inspection.defect_added", func(c *cycle) string { return c.defect },
		`INSERT INTO inspection_defects (id, auction_id, inspection_id, kind, severity, description, details) VALUES ($1, $2, $3, 'scratch', 'minor', 'scratch on the lid', '{"photos": 2, "length_mm": 14}')`,
		func(c *cycle) []any { return []any{c.defect, auctionID, c.insp} }},
	{"message.created", func(c *cycle) string { return c.msg[0] }, insertMessage, msgArgs(0)},
	{"problem.created", func(c *cycle) string { return c.problem },
		`INSERT INTO problem_reports (id, auction_id, reported_by, title, description, priority) VALUES ($1, $2, $3, 'Lot count mismatch', 'two items missing from the count', 'high')`,
		func(c *cycle) []any { return []any{c.problem, auctionID, c.member} }},
	{"message.created", func(c *cycle) string { return c.msg[1] }, insertMessage, msgArgs(1)},
	{"problem.status_changed", func(c *cycle) string { return c.problem },
		`UPDATE problem_reports SET status = 'in_progress', updated_at = now() WHERE id = $1`,
		func(c *cycle) []any { return []any{c.problem} }},
	{"problem.assigned", func(c *cycle) string { return c.problem },
		`UPDATE problem_reports SET assignee_id = $2, updated_at = now() WHERE id = $1`,
		func(c *cycle) []any { return []any{c.problem, ownerID} }},
	{"channel.created", func(c *cycle) string { return c.channel },
		`INSERT INTO channels (id, auction_id, name, topic, created_by) VALUES ($1, $2, $3, 'counting', $4)`,
		func(c *cycle) []any { return []any{c.channel, auctionID, fmt.Sprintf("lot-%d", 2*c.n+1), c.member} }},
	{"message.created", func(c *cycle) string { return c.msg[2] }, insertMessage, msgArgs(2)},
	{"message.created", func(c *cycle) string { return c.msg[3] }, insertMessage, msgArgs(3)},
	{"message.created", func(c *cycle) string { return c.msg[4] }, insertMessage, msgArgs(4)},
	{"message.edited", func(c *cycle) string { return c.msg[2] },
		`UPDATE messages SET body = body || ' (edited)', edited_at = now() WHERE id = $1`,
		func(c *cycle) []any { return []any{c.msg[2]} }},
	{"submission.created", func(c *cycle) string { return c.sub2 },
		`INSERT INTO lot_submissions (id, auction_id, member_id, lot_number, item_count, notes) VALUES ($1, $2, $3, $4, 7, NULL)`,
		func(c *cycle) []any { return []any{c.sub2, auctionID, c.member, 2*c.n + 2} }},
	{"message.created", func(c *cycle) string { return c.msg[5] }, insertMessage, msgArgs(5)},
	{"message.deleted", func(c *cycle) string { return c.msg[3] },
		`UPDATE messages SET deleted_at = now() WHERE id = $1`,
		func(c *cycle) []any { return []any{c.msg[3]} }},
	{"message.created", func(c *cycle) string { return c.msg[6] }, insertMessage, msgArgs(6)},
}

const insertMessage = `INSERT INTO messages (id, auction_id, channel_id, author_id, body) VALUES ($1, $2, $3, $4, $5)`

// msgArgs inserts message i of a cycle; the first two go to the shared
// channel (the cycle's own channel does not exist yet).
func msgArgs(i int) func(c *cycle) []any {
	return func(c *cycle) []any {
		ch := c.channel
		if i < 2 {
			ch = channelID
		}
		return []any{c.msg[i], auctionID, ch, c.member, msgBody}
	}
}

func newCycle(n int) *cycle {
	c := &cycle{n: n, member: newUUID(), sub: newUUID(), sub2: newUUID(), insp: newUUID(),
		defect: newUUID(), problem: newUUID(), channel: newUUID()}
	for i := range c.msg {
		c.msg[i] = newUUID()
	}
	return c
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// load generates changes: n single-statement transactions from workers
// connections, each worker walking its own cycles so every update finds the
// row its cycle inserted.
type load struct {
	dsn     string
	workers int
	// rate, when > 0, paces the changes: change g (counted over all
	// workers) starts at start + g/rate. 0: as fast as the database goes.
	rate float64
	// asyncCommit sets synchronous_commit = off for the generator's own
	// sessions (the backlog is written fast; walhook's store commits keep
	// the server's setting).
	asyncCommit bool
	// before, when set, is called just before a change's statement is sent
	// (its transaction commits inside that statement).
	before func(event, id string, t time.Time)
}

// run makes n changes and returns how many of each event type they should
// produce.
func (l load) run(ctx context.Context, n int) (map[string]int, error) {
	w := min(max(l.workers, 1), n)
	counts := make([]map[string]int, w)
	var startOnce sync.Once
	var start time.Time
	g, gctx := errgroup.WithContext(ctx)
	for i := 0; i < w; i++ {
		counts[i] = map[string]int{}
		g.Go(func() error {
			conn, err := pgx.Connect(gctx, l.dsn)
			if err != nil {
				return fmt.Errorf("load: %w", err)
			}
			defer conn.Close(context.WithoutCancel(gctx))
			if l.asyncCommit {
				if _, err := conn.Exec(gctx, "SET synchronous_commit = off"); err != nil {
					return fmt.Errorf("load: %w", err)
				}
			}
			startOnce.Do(func() { start = time.Now() })
			var c *cycle
			for k := 0; ; k++ {
				gi := k*w + i // global index
				if gi >= n {
					return nil
				}
				s := k % len(steps)
				if s == 0 {
					c = newCycle(k/len(steps)*w + i)
				}
				if l.rate > 0 {
					due := start.Add(time.Duration(float64(gi) / l.rate * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						select {
						case <-gctx.Done():
							return gctx.Err()
						case <-time.After(d):
						}
					}
				}
				st := steps[s]
				if l.before != nil {
					l.before(st.event, st.id(c), time.Now())
				}
				if _, err := conn.Exec(gctx, st.sql, st.args(c)...); err != nil {
					return fmt.Errorf("load: %s (%s): %w", st.event, strings.Fields(st.sql)[0], err)
				}
				counts[i][st.event]++
			}
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	total := map[string]int{}
	for _, m := range counts {
		for k, v := range m {
			total[k] += v
		}
	}
	return total, nil
}
