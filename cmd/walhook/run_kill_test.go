package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// buildWalhook builds the real binary into a temporary directory.
func buildWalhook(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "walhook")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// subprocessLog is the path for a child walhook's log, whose tail the
// test prints if it fails.
func subprocessLog(t *testing.T) string {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "walhook.log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("walhook log (tail):\n%s", runTail(string(b), 8000))
		}
	})
	return logFile
}

// subprocess is `walhook run` as a child process.
type subprocess struct {
	cmd *exec.Cmd
	log *os.File
}

func startSubprocess(t *testing.T, bin, cfgFile, logFile string) *subprocess {
	t.Helper()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cfgFile)
	cmd.Stdout, cmd.Stderr = f, f
	// Never outlive the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return &subprocess{cmd: cmd, log: f}
}

func (s *subprocess) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.log.Close()
}

// killTestChanges is the number of row changes of the kill test: the
// issue's 20,000 unless WALHOOK_KILLTEST_CHANGES says otherwise.
func killTestChanges(t *testing.T) int {
	if s := os.Getenv("WALHOOK_KILLTEST_CHANGES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 {
			t.Fatalf("WALHOOK_KILLTEST_CHANGES=%q: want a number ≥ 100", s)
		}
		return n
	}
	return 20000
}

// kill -9 of the real walhook binary at random moments while 20,000 row
// changes are written in many transactions, restarted each time: every
// expected event arrives at least once, every duplicate carries the same
// webhook id as the original, and nothing else arrives.
func TestRunSurvivesKill9(t *testing.T) {
	t.Parallel()
	started := time.Now()
	bin := buildWalhook(t)
	t.Logf("built walhook in %s", time.Since(started).Round(time.Millisecond))

	changes := killTestChanges(t)
	const perTx = 20
	rc := newRunReceiver(t, runSecret, nil)
	db, file := itemsRun(t, map[string]any{
		"endpoints":               []map[string]any{runEndpoint("r", rc.URL, runSecret)},
		"api.listen":              "off",
		"log.level":               "info",
		"delivery.timeout":        "2s",
		"delivery.lease":          "3s",
		"delivery.retry_schedule": []string{"0s", "50ms", "100ms", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s"},
		// The packages' tests share the CPUs: a walhook yielding to them
		// would fall up to cpu.max_lag behind between kills
		// (TestRunYieldsTheCPU covers yielding).
		"cpu.yield": false,
	})
	logFile := subprocessLog(t)
	proc := startSubprocess(t, bin, file, logFile)
	t.Cleanup(func() { proc.kill() })

	// Write the changes in transactions of perTx rows, paced so the kills
	// land while changes are still being written as well as after.
	genDone := make(chan error, 1)
	go func() {
		ctx := context.Background()
		for i := 0; i < changes; i += perTx {
			to := min(i+perTx, changes)
			if _, err := db.pool.Exec(ctx, `INSERT INTO items (id, auction_id) SELECT g, 'auc_' || (g % 7) FROM generate_series($1::int, $2::int) g`, i+1, to); err != nil {
				genDone <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		genDone <- nil
	}()

	// Each kill comes after the process has made some progress since its
	// start (a random share of what is left), so it lands mid-work: while
	// appending, delivering and recording, not during startup.
	kills := 3 + rand.IntN(3)
	for k := 0; k < kills; k++ {
		base := rc.Unique()
		target := min(base+50+rand.IntN(max(1, (changes-base)/(kills-k+1))), changes)
		runWaitFor(t, 60*time.Second, "progress before the next kill", func() bool { return rc.Unique() >= target }, nil)
		time.Sleep(time.Duration(rand.IntN(200)) * time.Millisecond)
		proc.kill()
		t.Logf("kill -9 #%d at %s: %d unique deliveries so far", k+1, time.Since(started).Round(time.Millisecond), rc.Unique())
		proc = startSubprocess(t, bin, file, logFile)
	}
	if err := <-genDone; err != nil {
		t.Fatalf("generating changes: %v", err)
	}
	t.Logf("%d changes written at %s", changes, time.Since(started).Round(time.Millisecond))
	runWaitFor(t, 90*time.Second, fmt.Sprintf("%d deliveries", changes), func() bool { return rc.Unique() >= changes }, func() string {
		return fmt.Sprintf("%d unique deliveries; process exited: %v", rc.Unique(), proc.cmd.ProcessState)
	})
	t.Logf("all %d delivered at %s after %d kills; %d duplicate requests", changes, time.Since(started).Round(time.Millisecond), kills, rc.Duplicates())

	// Every row's event arrived under exactly one webhook id, and nothing
	// else arrived: duplicates (at-least-once after a crash) repeat an id.
	idsByRow := map[int64]string{}
	for id, body := range rc.Bodies() {
		var b struct {
			Event     string `json:"event"`
			WebhookID string `json:"webhook_id"`
			Data      struct {
				ID int64 `json:"id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			t.Fatalf("body %s: %v", body, err)
		}
		if b.Event != "item.created" || b.WebhookID != id || b.Data.ID < 1 || b.Data.ID > int64(changes) {
			t.Errorf("unexpected delivery %s: %s", id, body)
			continue
		}
		if prev, ok := idsByRow[b.Data.ID]; ok {
			t.Errorf("row %d arrived under two webhook ids %s and %s", b.Data.ID, prev, id)
		}
		idsByRow[b.Data.ID] = id
	}
	if len(idsByRow) != changes || rc.Unique() != changes {
		t.Errorf("%d rows arrived under %d webhook ids, want %d", len(idsByRow), rc.Unique(), changes)
	}
	if rc.Rejected() != 0 {
		t.Errorf("%d requests failed signature verification", rc.Rejected())
	}

	// A graceful stop (SIGTERM) of the last process exits 0 and leaves the
	// slot confirmed at the store's cursor.
	if err := proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := proc.cmd.Wait(); err != nil {
		t.Errorf("walhook run after SIGTERM: %v, want exit 0", err)
	}
	if cur, slot := db.cursor(t), db.slotLSN(t); slot != cur {
		t.Errorf("after SIGTERM the slot is confirmed at %s, the cursor is %s", slot, cur)
	}
	t.Logf("total %s", time.Since(started).Round(time.Millisecond))
}
