package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/pgtest"
)

// The source's server hangs (its host froze: TCP still accepts, nothing
// answers) when walhook starts, and its DSN sets no connect_timeout. run
// exits 1 naming the source and check prints its FAIL line and exits 1,
// each after config.DefaultConnectTimeout, where both waited for as long
// as the server stayed frozen.
func TestStartWithAHungSource(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, src, _, _, file := twoClusterItems(t, "wh_revops_hungsrc")
	db.pool.Close()

	freezeCluster(t, src)

	const limit = 90 * time.Second
	var wg sync.WaitGroup
	for _, cmd := range []string{"run", "check"} {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, limit)
			defer cancel()
			start := time.Now()
			out, errOut, code := runCLI(t, cctx, cmd, "--config", file)
			took := time.Since(start)
			t.Logf("walhook %s with the source hung: exit %d after %s\n%s%s", cmd, code, took.Round(time.Millisecond), runTail(out, 1500), runTail(errOut, 1500))
			if took >= limit-time.Second {
				t.Errorf("walhook %s with the source hung did not exit by itself: still waiting after %s (cut off by the test), want exit 1 naming the source",
					cmd, took.Round(time.Second))
			} else if code != 1 || !strings.Contains(out+errOut, "source") || !strings.Contains(out+errOut, "timeout") {
				t.Errorf("walhook %s with the source hung: exit %d, want 1 naming the source's timeout", cmd, code)
			}
		})
	}
	wg.Wait()
}

// clusterPIDs returns the postmaster's PID and its children's.
// freezeCluster stops every process of c (SIGSTOP), as a host that froze,
// and returns what resumes them (once; also at the test's end).
func freezeCluster(t *testing.T, c *pgtest.Cluster) (resume func()) {
	t.Helper()
	pids := clusterPIDs(t, c)
	var once sync.Once
	resume = func() {
		once.Do(func() {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		})
	}
	t.Cleanup(resume)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	return resume
}

func clusterPIDs(t *testing.T, c *pgtest.Cluster) []int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{pm}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(st)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 1 && f[1] == strconv.Itoa(pm) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
