package cdc

import (
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/internal/pgtest"
)

// BenchmarkStreamVsRecvlogical loads N changes (WALHOOK_BENCH_CHANGES,
// default 200000) into the Auction Excellence sample schema in
// transactions of 100 rows, then drains one slot with Stream (decoding every
// value) and an identical second slot with pg_recvlogical (pgoutput to
// /dev/null, --endpos at the same LSN), one after the other, and reports
// changes/s for both and their ratio.
//
//	go test ./cdc -run '^$' -bench StreamVsRecvlogical -benchtime 1x
func BenchmarkStreamVsRecvlogical(b *testing.B) {
	n := 200000
	if s := os.Getenv("WALHOOK_BENCH_CHANGES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	c := pgtest.Shared(b)
	dsn := c.NewDatabase(b)
	schema, err := os.ReadFile(filepath.Join("..", "testdata", "auction-excellence", "schema.sql"))
	if err != nil {
		b.Fatal(err)
	}
	exec(b, dsn, string(schema))
	exec(b, dsn, `
		INSERT INTO auctions (id, name) VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'bench');
		INSERT INTO members (id, auction_id, email) VALUES ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'm@example.com');
		CREATE PUBLICATION walhook FOR TABLE lot_submissions, auctions, members`)
	recv := filepath.Join(c.BinDir, "pg_recvlogical")

	var walhookRate, recvRate float64
	for i := 0; i < b.N; i++ {
		slotA, slotB := fmt.Sprintf("%s_a%d", slotFor(dsn), i), fmt.Sprintf("%s_b%d", slotFor(dsn), i)
		exec(b, dsn, `SELECT pg_create_logical_replication_slot($1, 'pgoutput'), pg_create_logical_replication_slot($2, 'pgoutput')`, slotA, slotB)
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		for done := 0; done < n; done += 100 {
			if _, err := conn.Exec(ctx, `INSERT INTO lot_submissions (id, auction_id, member_id, lot_number, item_count, notes)
				SELECT gen_random_uuid(), 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', g, g % 17, 'lot ' || g
				FROM generate_series($1::int, $1::int + 99) g`, done); err != nil {
				b.Fatal(err)
			}
		}
		var end string
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
			b.Fatal(err)
		}
		conn.Close(ctx)

		b.StartTimer()
		start := time.Now()
		drainStream(b, dsn, slotA, n)
		walhookRate = float64(n) / time.Since(start).Seconds()

		start = time.Now()
		cmd := osexec.Command(recv, "-d", dsn, "--slot", slotB, "--start", "--no-loop", "-o", "proto_version=1",
			"-o", "publication_names=walhook", "--endpos", end, "-f", "/dev/null")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("pg_recvlogical: %v: %s", err, out)
		}
		recvRate = float64(n) / time.Since(start).Seconds()
		b.StopTimer()
		exec(b, dsn, `SELECT pg_drop_replication_slot($1), pg_drop_replication_slot($2)`, slotA, slotB)
	}
	b.ReportMetric(walhookRate, "walhook_changes/s")
	b.ReportMetric(recvRate, "recvlogical_changes/s")
	b.ReportMetric(walhookRate/recvRate, "ratio")
}

func drainStream(b *testing.B, dsn, slot string, n int) {
	s, err := NewStream(Options{DSN: dsn, Slot: slot, Publication: "walhook"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, 0) }()
	defer func() { cancel(); <-done }()
	for got := 0; got < n; {
		select {
		case tx := <-s.Txs():
			got += len(tx.Changes)
			if tx.Final {
				s.Confirm(tx.EndLSN)
			}
		case err := <-done:
			b.Fatalf("Run: %v", err)
		}
	}
}
