package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/lograte"
	"github.com/walhook/walhook/internal/pgtest"
)

// The leader lock's session is one the server ends when its process is
// gone without a word (a host that died, a network that dropped it):
// TCP keepalives every few seconds and, where a middlebox answers them,
// idle_session_timeout. PostgreSQL releases a session's advisory lock
// only when the session ends, so without these a standby waited for the
// OS's keepalive, about two hours, while nobody replicated.
func TestLeaderLockSessionEndsWhenSilent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.Shared(t).NewDatabase(t)
	pool := func() *pgxpool.Pool {
		p, err := pgxpool.New(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	log := slog.New(slog.DiscardHandler)
	a, err := acquireLeader(ctx, pool(), "k", log, func(string) {}, lograte.New(time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.release()
	want := map[string]string{"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
		"idle_session_timeout": "1min"}
	for name, w := range want {
		var got string
		if err := a.conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != w {
			t.Errorf("lock session %s = %s, want %s", name, got, w)
		}
	}

	// The holder falls silent. (A minute in production; a second here.)
	if _, err := a.conn.Exec(ctx, "SET idle_session_timeout = '1s'"); err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, err := acquireLeader(bctx, pool(), "k", log, func(string) {}, lograte.New(time.Minute), nil)
	if err != nil {
		t.Fatalf("a standby did not get the lock of a silent holder: %v", err)
	}
	b.release()
}
