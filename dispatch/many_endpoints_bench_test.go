package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

// manyEndpoints inserts n API-style endpoints the way a multi-tenant
// product has them: each subscribed to one auction ('A<i>') and to
// auction.* events.
func manyEndpoints(tb testing.TB, b *obBundle, n int) {
	tb.Helper()
	if _, err := b.pool.Exec(context.Background(), `INSERT INTO walhook.endpoints (id, url, events, auctions, secret)
		SELECT 'whk_' || lpad(i::text, 6, '0'), 'https://t' || i || '.example/', '{auction.*}', ARRAY['A' || i], $2
		FROM generate_series(1, $1) i`, n, obSecret); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkAppendManyEndpoints measures an Append of 100 one-event
// transactions with 1 and 5,000 auction-filtered endpoints, each event
// matching one of them: the fan-out's cost as endpoints grow; and the
// same with one endpoint changed before each Append (the endpoints are
// read again).
//
//	go test ./dispatch -run '^$' -bench AppendManyEndpoints -benchtime 200x
func BenchmarkAppendManyEndpoints(b *testing.B) {
	for _, c := range []struct {
		n    int
		edit bool
	}{{1, false}, {5000, false}, {1, true}, {5000, true}} {
		n := c.n
		b.Run(fmt.Sprintf("endpoints=%d/edit_before_each=%v", n, c.edit), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil })
			manyEndpoints(b, bb, n)
			ctx := context.Background()
			lsn := cdc.LSN(1 << 20)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if c.edit {
					// An admin changes one endpoint (the API's PATCH).
					if _, err := bb.pool.Exec(ctx, `UPDATE walhook.endpoints SET events = CASE WHEN events = '{auction.*}'
						THEN '{auction.*,bid.*}'::text[] ELSE '{auction.*}'::text[] END WHERE id = 'whk_000001'`); err != nil {
						b.Fatal(err)
					}
				}
				batch := make([]TxEvents, 100)
				for j := range batch {
					lsn += 100
					ev := obEvent("auction.bid_placed", fmt.Sprintf("A%d", 1+(i*100+j)%n))
					batch[j] = TxEvents{Xid: uint32(lsn), CommitLSN: lsn - 10, EndLSN: lsn, Final: true,
						CommitTime: ev.OccurredAt, Events: []mapper.Event{ev}}
				}
				if err := d.Append(ctx, "slot", "sys", batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*100)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkClaimManyEndpoints measures one claim of 64 with 1 and 5,000
// active endpoints of which one has due deliveries, with 5,000 that all
// have (the worst case for a walk of the endpoints with pending rows), and
// with 500 dead endpoints holding 1,000 retries each, none due.
//
//	go test ./dispatch -run '^$' -bench ClaimManyEndpoints -benchtime 100x
func BenchmarkClaimManyEndpoints(b *testing.B) {
	for _, c := range []struct{ n, pending, backlogs int }{{1, 1, 0}, {5000, 1, 0}, {5000, 5000, 0}, {5000, 1, 500}} {
		b.Run(fmt.Sprintf("endpoints=%d/pending_at=%d/dead_backlogs=%d", c.n, c.pending, c.backlogs), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil; o.MaxInFlightPerEndpoint = 64 })
			manyEndpoints(b, bb, c.n)
			ctx := context.Background()
			if _, err := bb.pool.Exec(ctx, fmt.Sprintf(`
				INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
				SELECT 'ev' || i, 'auction.x', 'auction-excellence', now(), '{}' FROM generate_series(1, %[1]d) i;
				INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status)
				SELECT 'd' || i, 'ev' || i, 'whk_' || lpad((i %% %[2]d + 1)::text, 6, '0'), 'auction.x', 'pending'
				FROM generate_series(1, %[1]d) i;
				ANALYZE walhook.deliveries; ANALYZE walhook.endpoints`, b.N*64+c.pending, c.pending)); err != nil {
				b.Fatal(err)
			}
			// Dead endpoints' retries, 1,000 each, not due yet.
			if _, err := bb.pool.Exec(ctx, fmt.Sprintf(`
				INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, next_attempt_at)
				SELECT 'r' || i, 'ev1', 'whk_' || lpad((4000 + i %% %[1]d)::text, 6, '0'), 'auction.x', 'pending', now() + interval '1 hour'
				FROM generate_series(1, %[1]d * 1000) i;
				ANALYZE walhook.deliveries`, c.backlogs)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cs, _, err := d.claim(ctx, 64, &inflight{})
				if err != nil || len(cs) != 64 {
					b.Fatal(len(cs), err)
				}
			}
		})
	}
}

// BenchmarkHealthyLatencyWithDeadEndpoints measures the time from an
// Append to its healthy endpoint's receiver with no other endpoints, and
// with 500 dead ones (failing, each with 2 due retries, their requests
// hanging until the 2 s attempt timeout): the latency a healthy tenant
// sees while hundreds of others are down.
//
//	go test ./dispatch -run '^$' -bench HealthyLatencyWithDeadEndpoints -benchtime 20x
func BenchmarkHealthyLatencyWithDeadEndpoints(b *testing.B) {
	for _, dead := range []int{0, 500} {
		b.Run(fmt.Sprintf("dead=%d", dead), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil; o.Client.Timeout = 2 * time.Second })
			got := make(chan struct{}, 1)
			healthy := obNewReceiver(b, func(int, http.ResponseWriter, *http.Request) int { got <- struct{}{}; return 200 })
			stop := make(chan struct{})
			hang := obNewReceiver(b, func(_ int, _ http.ResponseWriter, r *http.Request) int {
				select {
				case <-r.Context().Done():
				case <-stop:
				}
				return 500
			})
			bb.endpoint(b, "healthy", healthy.URL, nil, []string{"H"}, true)
			ctx := context.Background()
			if _, err := bb.pool.Exec(ctx, `INSERT INTO walhook.endpoints (id, url, auctions, secret, failing_since)
				SELECT 'dead' || i, $2, ARRAY['D' || i], $3, now() - interval '1 hour' FROM generate_series(1, $1) i`,
				dead, hang.URL, obSecret); err != nil {
				b.Fatal(err)
			}
			if _, err := bb.pool.Exec(ctx, fmt.Sprintf(`
				INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
				SELECT 'ev' || i, 'auction.x', 'auction-excellence', now(), '{}' FROM generate_series(1, %[1]d) i;
				INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, next_attempt_at)
				SELECT 'd' || i, 'ev' || i, 'dead' || (i %% %[2]d + 1), 'auction.x', 'pending', now() - interval '1 minute'
				FROM generate_series(1, %[1]d) i`, 2*dead, max(dead, 1))); err != nil {
				b.Fatal(err)
			}
			obRun(b, d)
			b.Cleanup(func() { close(stop) })
			time.Sleep(time.Second) // the dead endpoints' requests under way
			lsn := cdc.LSN(1 << 20)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				lsn += 100
				obAppend(b, d, lsn, obEvent("auction.bid_placed", "H"))
				select {
				case <-got:
				case <-time.After(time.Minute):
					b.Fatal("the healthy endpoint got nothing in a minute")
				}
			}
		})
	}
}
