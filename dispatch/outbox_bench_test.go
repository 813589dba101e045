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
