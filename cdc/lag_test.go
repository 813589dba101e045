package cdc

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// After a quiet spell the first unconfirmed WAL is young, and the lag in
// seconds says so: it counted from the stream's last new confirmation, so
// with heartbeats off (source.heartbeat_interval: 0) a source idle for an
// hour showed an hour of lag the moment it wrote again, on every
// transaction and for as long as a large one took to read: an alert on
// walhook_slot_lag_seconds fired on each return from idleness. A keepalive
// that finds everything the server sent confirmed now counts as caught up.
//
// A cluster of its own: the shared one carries the other tests' WAL, which
// the stream would confirm, and the source would never be idle.
func TestLagSecondsAfterAnIdleSpell(t *testing.T) {
	t.Parallel()
	c := pgtest.StartT(t, pgtest.Options{})
	dsn := c.NewDatabase(t)
	setupDB(t, dsn, itemSchema, "public.item")
	const statusEvery = 200 * time.Millisecond
	b := startStream(t, dsn, 0, func(o *Options) { o.StatusInterval = statusEvery })

	// The consumer confirms all it gets until held; then it holds it.
	var held atomic.Bool
	go func() {
		for tx := range b.stream.Txs() {
			if !held.Load() {
				b.stream.Confirm(tx.EndLSN)
			}
		}
	}()
	exec(t, dsn, `INSERT INTO item VALUES (1, 'open')`)

	// Wait for an idle spell: everything confirmed and no WAL written for
	// 5 s (the server's own records, e.g. running_xacts, start it over).
	const idle = 5 * time.Second
	var walEnd LSN
	var since time.Time
	waitFor(t, "an idle spell", func() bool {
		st, err := b.stream.Status(context.Background())
		if err != nil || st.LagBytes != 0 || st.WALEnd != walEnd {
			walEnd, since = st.WALEnd, time.Now()
			return false
		}
		return time.Since(since) >= idle
	})

	held.Store(true)
	before := time.Now()
	exec(t, dsn, `INSERT INTO item VALUES (2, 'open')`)
	var st SlotStatus
	waitFor(t, "the insert to be unconfirmed", func() bool {
		var err error
		st, err = b.stream.Status(context.Background())
		return err == nil && st.LagBytes > 0
	})
	// The WAL unconfirmed now was written after before; the stream knew
	// it was caught up at most a status interval (and a round trip) earlier.
	if limit := time.Since(before) + 2*time.Second; st.LagSeconds > limit.Seconds() {
		t.Fatalf("lagSeconds %.1f after an idle spell of %s, for WAL written %.1f s ago: want at most %.1f",
			st.LagSeconds, idle, time.Since(before).Seconds(), limit.Seconds())
	}
}
