// Package pgtest starts throwaway PostgreSQL clusters from the locally
// installed server binaries, for tests that must run against the real thing.
//
// One cluster per test binary (see Main), a fresh database per test (see
// Cluster.NewDatabase). The clusters themselves are internal/pgcluster's;
// this package adds what needs package testing, so that only test binaries
// link it.
package pgtest

import (
	"fmt"
	"os"
	"testing"

	"github.com/walhook/walhook/internal/pgcluster"
)

// Cluster and Options are internal/pgcluster's.
type (
	Cluster = pgcluster.Cluster
	Options = pgcluster.Options
)

// Start starts a cluster; the caller removes it (Cluster.Remove).
func Start(opts Options) (*Cluster, error) { return pgcluster.Start(opts) }

var shared *Cluster

// Main starts one cluster for the test binary, runs the tests and removes the
// cluster, even when tests fail. Use it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Without server binaries it exits 1 with installation instructions; it never
// skips.
func Main(m *testing.M) {
	c, err := Start(Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		os.Exit(1)
	}
	shared = c
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "pgtest: server log tail:\n%s\n", c.TailLog())
	}
	c.Remove()
	os.Exit(code)
}

// Shared returns the cluster started by Main.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	if shared == nil {
		t.Fatal("pgtest: no shared cluster; call pgtest.Main(m) from TestMain")
	}
	return shared
}

// StartT starts a private cluster for one test (for fault tests that restart,
// crash or misconfigure it) and removes it when the test ends.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := Start(opts)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pgtest: server log tail:\n%s", c.TailLog())
		}
		c.Remove()
	})
	return c
}
