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
	for _, txs := range []int{1, 100} {
		b.Run(fmt.Sprintf("txs=%d", txs), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil })
			bb.endpoint(b, "e1", "https://one.example/", nil, nil, true)
			bb.endpoint(b, "e2", "https://two.example/", []string{"problem.*"}, nil, true)
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
// statement, repeat, over an outbox already holding `backlog` pending
// deliveries (appended in transactions of 100 events). It reports
// deliveries/s for claim batches of 16 and 64; the rate should not fall as
// the outbox grows (claim and record are O(batch)).
//
//	go test ./dispatch -run '^$' -bench DeliveryStore -benchtime 20000x
func BenchmarkDeliveryStore(b *testing.B) {
	for _, batch := range []int{16, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			d, bb := obSetup(b, func(o *Options) { o.Logger = nil; o.MaxInFlightPerEndpoint = batch })
			bb.endpoint(b, "e1", "https://one.example/", nil, nil, true)
			ctx := context.Background()
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
