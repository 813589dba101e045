package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapper"
)

// BenchmarkAppend measures the durability point: events made durable per
// second, for batches of 1 and 100 one-event transactions fanned out to 2
// endpoints (so each event also writes 2 deliveries and the cursor).
//
//	go test ./dispatch -run '^$' -bench Append -benchtime 3s
func BenchmarkAppend(b *testing.B) {
	for _, c := range []struct{ txs, others int }{{1, 0}, {100, 0}, {1, 1000}, {100, 1000}} {
		txs := c.txs
		b.Run(fmt.Sprintf("txs=%d/other_endpoints=%d", txs, c.others), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil })
			bb.endpoint(b, "e1", "https://one.example/", nil, nil, true)
			bb.endpoint(b, "e2", "https://two.example/", []string{"problem.*"}, nil, true)
			// Endpoints the events do not match (other subscribers).
			if _, err := bb.pool.Exec(context.Background(), `INSERT INTO walhook.endpoints (id, url, events, secret)
				SELECT 'o' || i, 'https://other.example/' || i, '{member.*}', $2 FROM generate_series(1, $1) i`, c.others, obSecret); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			lsn := cdc.LSN(1 << 20)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				batch := make([]TxEvents, txs)
				for j := range batch {
					lsn += 100
					ev := obEvent("problem.status_changed", "A1")
					batch[j] = TxEvents{Xid: uint32(lsn), CommitLSN: lsn - 10, EndLSN: lsn, Final: true,
						CommitTime: ev.OccurredAt, Events: []mapper.Event{ev}}
				}
				if err := d.Append(ctx, "slot", "sys", batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*txs)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkDeliveryStore measures the store's side of delivering, without
// HTTP: claim a batch, record every one as a 2xx through the recorder's
// statement, repeat, over an outbox already holding the b.N pending
// deliveries (appended in transactions of 100 events). It reports
// deliveries/s for claim batches of 16 and 64; the rate should not fall as
// the outbox grows (claim and record are O(batch)), and not with 300,000
// delivered rows of history either.
//
//	go test ./dispatch -run '^$' -bench DeliveryStore -benchtime 20000x
func BenchmarkDeliveryStore(b *testing.B) {
	for _, c := range []struct{ batch, history int }{{16, 0}, {64, 0}, {64, 300000}} {
		batch := c.batch
		b.Run(fmt.Sprintf("batch=%d/history=%d", batch, c.history), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil; o.MaxInFlightPerEndpoint = batch })
			bb.endpoint(b, "e1", "https://one.example/", nil, nil, true)
			ctx := context.Background()
			if c.history > 0 {
				// Delivered history the claim must not pay for, written
				// without ANALYZE (the planner's statistics stay stale, as
				// they are for a while after any burst).
				if _, err := bb.pool.Exec(ctx, `
					INSERT INTO walhook.events (id, type, envelope, occurred_at, data)
					SELECT 'h' || i, 'a.b', 'auction-excellence', now(), '{}' FROM generate_series(1, $1) i;
					`, c.history); err != nil {
					b.Fatal(err)
				}
				if _, err := bb.pool.Exec(ctx, `
					INSERT INTO walhook.deliveries (id, event_id, endpoint_id, event_type, status, attempts, delivered_at)
					SELECT 'hd' || i, 'h' || i, 'e1', 'a.b', 'delivered', 1, now() FROM generate_series(1, $1) i`, c.history); err != nil {
					b.Fatal(err)
				}
			}
			lsn := cdc.LSN(1 << 20)
			for left := b.N; left > 0; left -= 100 {
				txs := make([]TxEvents, min(left, 100))
				for j := range txs {
					lsn += 100
					ev := obEvent("problem.status_changed", "A1")
					txs[j] = TxEvents{Xid: uint32(lsn), CommitLSN: lsn - 10, EndLSN: lsn, Final: true,
						CommitTime: ev.OccurredAt, Events: []mapper.Event{ev}}
				}
				if err := d.Append(ctx, "slot", "sys", txs); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			start := time.Now()
			done := 0
			for done < b.N {
				cs, _, err := d.claim(ctx, batch, &inflight{})
				if err != nil {
					b.Fatal(err)
				}
				if len(cs) == 0 {
					b.Fatalf("claimed nothing after %d of %d", done, b.N)
				}
				ss := make([]success, len(cs))
				for i, c := range cs {
					ss[i] = success{c: c, started: time.Now(), res: Result{StatusCode: 200, Duration: time.Millisecond}}
				}
				if err := d.recordSuccesses(ctx, ss); err != nil {
					b.Fatal(err)
				}
				done += len(cs)
			}
			b.ReportMetric(float64(done)/time.Since(start).Seconds(), "deliveries/s")
		})
	}
}
