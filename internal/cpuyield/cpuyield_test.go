package cpuyield

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	const maxLag = time.Minute
	cases := []struct {
		name   string
		from   state
		busy   float64
		busyOK bool
		lag    time.Duration
		want   state
	}{
		{"busy machine: yield", state{}, 0.95, true, time.Second, state{yielding: true}},
		{"at the entry threshold: yield", state{}, enterBusy, true, 0, state{yielding: true}},
		{"below the entry threshold: stay normal", state{}, 0.85, true, 0, state{}},
		{"yielding, still fairly busy: keep yielding", state{yielding: true}, 0.80, true, 0, state{yielding: true}},
		{"yielding, CPUs to spare: normal", state{yielding: true}, 0.50, true, 0, state{}},
		{"busy but behind: normal", state{yielding: true}, 0.99, true, maxLag + time.Second, state{behind: true}},
		{"behind, lag back under the bound but over half: still normal", state{behind: true}, 0.99, true, maxLag - time.Second, state{behind: true}},
		{"behind, lag under half the bound: yield again", state{behind: true}, 0.99, true, maxLag / 2, state{yielding: true}},
		{"busy unknown: normal", state{yielding: true}, 0, false, 0, state{}},
	}
	for _, c := range cases {
		if got := next(c.from, c.busy, c.busyOK, c.lag, maxLag); got != c.want {
			t.Errorf("%s: next(%+v, %.2f, %v, %s) = %+v, want %+v", c.name, c.from, c.busy, c.busyOK, c.lag, got, c.want)
		}
	}
}

func TestParseCPULine(t *testing.T) {
	idle, total, err := parseCPULine("cpu  100 5 50 800 20 3 2 10 7 0")
	if err != nil {
		t.Fatal(err)
	}
	// idle = idle + iowait; total = user..steal (guest is inside user).
	if idle != 820 || total != 990 {
		t.Fatalf("idle, total = %d, %d; want 820, 990", idle, total)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu0 1 2 3 4 5", "cpu 1 2 x 4 5", "cpu 1 2"} {
		if _, _, err := parseCPULine(bad); err == nil {
			t.Errorf("parseCPULine(%q): no error", bad)
		}
	}
}

func TestProcStatSample(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stat")
	write := func(line string) {
		if err := os.WriteFile(path, []byte(line+"\ncpu0 1 2 3 4 5\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &procStat{path: path}
	write("cpu 100 0 100 800 0 0 0 0")
	if _, ok := p.sample(); ok {
		t.Fatal("first sample: want no measure, only a baseline")
	}
	// 200 more ticks, 20 of them idle: 90 % busy.
	write("cpu 200 0 170 810 10 0 0 10")
	if b, ok := p.sample(); !ok || b < 0.899 || b > 0.901 {
		t.Fatalf("busy = %.3f, %v; want 0.900, true", b, ok)
	}
	// Counters that went back (a reset, a different file): no measure.
	write("cpu 1 0 1 1 0 0 0 0")
	if _, ok := p.sample(); ok {
		t.Fatal("counters went back: want no measure")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.sample(); ok {
		t.Fatal("unreadable file: want no measure")
	}
	// The real file parses.
	if _, _, err := readCPUTimes("/proc/stat"); err != nil {
		t.Fatalf("/proc/stat: %v", err)
	}
}

func TestRunRefusesNonPositiveMaxLag(t *testing.T) {
	err := Run(context.Background(), Options{Log: slog.New(slog.DiscardHandler), Lag: func() time.Duration { return 0 }})
	if err == nil || !strings.Contains(err.Error(), "MaxLag must be positive") {
		t.Fatalf("err = %v", err)
	}
}
