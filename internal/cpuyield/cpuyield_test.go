package cpuyield

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	const maxLag = time.Minute
	b := firstBackoff
	cases := []struct {
		name string
		from state
		load load
		ok   bool
		lag  time.Duration
		want state
	}{
		{"busy machine, mostly walhook's own load: yield", state{}, load{0.95, 0.30}, true, time.Second, state{yielding: true, backoff: b}},
		{"at the entry threshold: yield", state{}, load{busy: enterBusy, own: 0.5}, true, 0, state{yielding: true, backoff: b}},
		{"below the entry threshold: stay normal", state{}, load{busy: 0.85}, true, 0, state{backoff: b}},
		{"yielding, still fairly busy: keep yielding", state{yielding: true}, load{0.80, 0.20}, true, 0, state{yielding: true, backoff: b}},
		{"yielding, CPUs to spare: normal", state{yielding: true}, load{busy: 0.50}, true, 0, state{backoff: b}},
		{"busy but behind: normal", state{yielding: true}, load{busy: 0.99}, true, maxLag + time.Second, state{behind: true, backoff: b}},
		{"behind, lag back under the bound but over half: still normal", state{behind: true}, load{busy: 0.99}, true, maxLag - time.Second, state{behind: true, backoff: b}},
		{"behind, lag under half the bound: yield and defer again", state{behind: true}, load{busy: 0.99}, true, maxLag / 2, state{yielding: true, deferring: true, backoff: b}},
		{"busy unknown: normal", state{yielding: true}, load{}, false, 0, state{backoff: b}},

		{"busy with other processes: yield and defer", state{}, load{0.97, 0.05}, true, 0, state{yielding: true, deferring: true, backoff: b}},
		{"others at the deferral threshold: defer", state{yielding: true, backoff: b}, load{1, 1 - deferOthers}, true, 0, state{yielding: true, deferring: true, backoff: b}},
		{"others under the deferral threshold: only yield", state{yielding: true, backoff: b}, load{1, 0.21}, true, 0, state{yielding: true, backoff: b}},
		{"deferring, CPUs still busy: the deferral holds", state{yielding: true, deferring: true, backoff: b}, load{0.96, 0}, true, time.Second, state{yielding: true, deferring: true, held: 1, backoff: b}},
		{"deferring, still busy: count on", state{yielding: true, deferring: true, held: 7, backoff: b}, load{0.80, 0}, true, 5 * time.Second, state{yielding: true, deferring: true, held: 8, backoff: b}},
		{"probe: the CPUs emptied at once, the load was walhook's: back off", state{yielding: true, deferring: true, backoff: b}, load{0.20, 0.01}, true, 0, state{wait: b, backoff: 2 * b}},
		{"another miss: twice the back-off", state{yielding: true, deferring: true, backoff: 4 * b}, load{0.20, 0.01}, true, 0, state{wait: 4 * b, backoff: 8 * b}},
		{"misses stop doubling at the cap", state{yielding: true, deferring: true, backoff: maxBackoff}, load{0.20, 0.01}, true, 0, state{wait: maxBackoff, backoff: maxBackoff}},
		{"waiting out the back-off: no deferral however busy", state{yielding: true, wait: 3, backoff: 2 * b}, load{1, 0}, true, 0, state{yielding: true, wait: 2, backoff: 2 * b}},
		{"back-off over: defer again", state{yielding: true, backoff: 2 * b}, load{1, 0}, true, 0, state{yielding: true, deferring: true, backoff: 2 * b}},
		{"a deferral that held ends as the CPUs free up: back-off reset", state{yielding: true, deferring: true, held: 9, backoff: 4 * b}, load{0.30, 0}, true, 0, state{backoff: b}},
		{"a deferral ends once behind, without a back-off", state{yielding: true, deferring: true, held: 60, backoff: b}, load{1, 0}, true, maxLag + time.Second, state{behind: true, backoff: b}},
		{"behind at the probe: not a miss", state{yielding: true, deferring: true, backoff: b}, load{1, 0}, true, maxLag + time.Second, state{behind: true, backoff: b}},
		{"deferring, busy unknown: stop, not a miss", state{yielding: true, deferring: true, backoff: b}, load{}, false, 0, state{backoff: b}},
	}
	for _, c := range cases {
		if got := next(c.from, c.load, c.ok, c.lag, maxLag); got != c.want {
			t.Errorf("%s: next(%+v, %+v, %v, %s) = %+v, want %+v", c.name, c.from, c.load, c.ok, c.lag, got, c.want)
		}
	}
}

// simulate runs next for n intervals on a machine whose load depends on
// whether walhook takes new changes, and returns the intervals deferred.
func simulate(n int, running, paused load, lag func(i int, deferring bool) time.Duration) (deferred int, s state) {
	for i := range n {
		l := running
		if s.deferring {
			l = paused
		}
		s = next(s, l, true, lag(i, s.deferring), time.Minute)
		if s.deferring {
			deferred++
		}
	}
	return deferred, s
}

// A drain whose load is walhook's own (its store sessions and receivers
// show up as other processes): probes back off, so over ten minutes the
// drain is paused for a handful of one-interval probes.
func TestNextDrainIsProbedRarely(t *testing.T) {
	noLag := func(int, bool) time.Duration { return 0 }
	deferred, _ := simulate(600, load{busy: 1, own: 0.1}, load{busy: 0.15}, noLag)
	if deferred > 7 {
		t.Fatalf("deferred %d of 600 intervals of its own drain; want at most 7 (back-off 10, 20, 40, 80, 160, 320)", deferred)
	}
	if deferred == 0 {
		t.Fatal("never probed: others at 90 % busy should be probed once")
	}
	// Most drains never look like others' load at all.
	if deferred, _ := simulate(600, load{busy: 1, own: 0.3}, load{busy: 0.1}, noLag); deferred != 0 {
		t.Fatalf("deferred %d intervals with others at 70 %% busy", deferred)
	}
}

// An application that keeps the CPUs busy on its own, on a machine where
// walhook at normal priority catches up faster than the lag grows: walhook
// defers from the first interval until it is MaxLag behind, catches up to
// half of MaxLag, and defers again, so it never steps back past MaxLag.
// (Where walhook at normal priority only keeps pace, the lag stays near
// MaxLag instead; docs/operations.md says so.)
func TestNextSustainedLoadDefersUpToMaxLag(t *testing.T) {
	lag := time.Duration(0)
	var trace []bool
	step := func(_ int, deferring bool) time.Duration {
		trace = append(trace, deferring)
		if deferring {
			lag += time.Second
		} else {
			lag = max(lag-3*time.Second, 0) // catching up three times as fast
		}
		return lag
	}
	deferred, s := simulate(300, load{busy: 1, own: 0.05}, load{busy: 0.97}, step)
	if lag > time.Minute+time.Second {
		t.Fatalf("lag %s, want at most max_lag (1m) and an interval", lag)
	}
	if deferred < 200 {
		t.Fatalf("deferred %d of 300 intervals under another process's load; want most of them", deferred)
	}
	if s.backoff != firstBackoff {
		t.Fatalf("back-off %d after deferrals that held, want %d", s.backoff, firstBackoff)
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
	self := filepath.Join(t.TempDir(), "self")
	writeSelf := func(utime, stime int) {
		line := fmt.Sprintf("4242 (walhook (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 %d %d 0 0 20 0 9 0 1 1 1\n", utime, stime)
		if err := os.WriteFile(self, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &procStat{path: path, self: self}
	write("cpu 100 0 100 800 0 0 0 0")
	writeSelf(10, 5)
	if _, ok := p.sample(); ok {
		t.Fatal("first sample: want no measure, only a baseline")
	}
	// 200 more ticks, 20 of them idle: 90 % busy; 30 of them this process.
	write("cpu 200 0 170 810 10 0 0 10")
	writeSelf(30, 15)
	if l, ok := p.sample(); !ok || l.busy < 0.899 || l.busy > 0.901 || l.own < 0.149 || l.own > 0.151 {
		t.Fatalf("load = %+v, %v; want busy 0.900, own 0.150, true", l, ok)
	}
	// The process's file unreadable: no measure.
	if err := os.Remove(self); err != nil {
		t.Fatal(err)
	}
	write("cpu 300 0 240 830 20 0 0 10")
	if _, ok := p.sample(); ok {
		t.Fatal("unreadable /proc/self/stat: want no measure")
	}
	writeSelf(40, 20)
	if _, ok := p.sample(); ok {
		t.Fatal("first sample after an unreadable file: want only a baseline")
	}
	write("cpu 400 0 240 900 20 0 0 10")
	writeSelf(50, 20)
	if l, ok := p.sample(); !ok || l.busy < 0.587 || l.busy > 0.589 || l.own < 0.0587 || l.own > 0.0589 {
		t.Fatalf("load = %+v, %v; want busy 0.588, own 0.059, true", l, ok)
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
	// The real files parse.
	if _, _, err := readCPUTimes("/proc/stat"); err != nil {
		t.Fatalf("/proc/stat: %v", err)
	}
	if _, err := readOwnTime("/proc/self/stat"); err != nil {
		t.Fatalf("/proc/self/stat: %v", err)
	}
}

func TestParseOwnTime(t *testing.T) {
	got, err := parseOwnTime("77 (a) b) c) R 1 77 77 0 -1 0 0 0 0 0 123 45 0 0 20 0 1 0 5 0 0")
	if err != nil || got != 168 {
		t.Fatalf("parseOwnTime = %d, %v; want 168 (utime 123 + stime 45, counted after the last ')')", got, err)
	}
	for _, bad := range []string{"", "77 no parenthesis", "77 (a) R 1 2 3", "77 (a) R 1 77 77 0 -1 0 0 0 0 0 x 45 0"} {
		if _, err := parseOwnTime(bad); err == nil {
			t.Errorf("parseOwnTime(%q): no error", bad)
		}
	}
}

func TestRunRefusesNonPositiveMaxLag(t *testing.T) {
	err := Run(context.Background(), Options{Log: slog.New(slog.DiscardHandler), Lag: func() time.Duration { return 0 }})
	if err == nil || !strings.Contains(err.Error(), "MaxLag must be positive") {
		t.Fatalf("err = %v", err)
	}
}
