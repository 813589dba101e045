// Package cpuyield lets walhook give way to the database and the
// application on CPUs it shares with them.
//
// While the machine's CPUs are busy and walhook is less than a lag bound
// behind the source, every thread of the process runs under Linux's
// SCHED_IDLE policy: the kernel then gives walhook only the CPU time that
// no normally scheduled process wants. Once walhook trails the source by
// more than the bound, or the CPUs have time to spare, its threads run at
// normal priority again: walhook steps back for about the bound at most,
// and from then on gets the share it would have had without yielding
// (which, on cores the application keeps saturated, may only keep pace).
//
// Idle priority alone still lets walhook cause work at normal priority
// elsewhere: its store sessions in PostgreSQL, the walsender, the
// receivers. So while the CPUs stay busy with work that is not walhook's,
// Run also defers: it tells the caller (Options.Defer) to take no new
// changes from the source for now. Whether the load is walhook's own is
// found out by trying: the first interval of a deferral is a probe, and
// when the CPUs empty at once the load was walhook's (a backlog it drains
// through its own store sessions), so the deferral ends and the next probe
// waits, twice as long after each such miss.
//
// Only a process that may raise its priority back runs idle: leaving
// SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE of at least 20 (nice 0).
// Without that, or when the process was started under another policy or
// nice value by its operator (chrt, nice, systemd's CPUSchedulingPolicy),
// Run leaves the priority alone and says why.
package cpuyield

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Busy thresholds over one interval, as a fraction of all CPU time
// (steal included: time the hypervisor took is not available either).
// Two thresholds, so that a machine near one of them does not flip the
// policy every second.
const (
	enterBusy = 0.90 // start yielding once the CPUs were at least this busy
	leaveBusy = 0.75 // stop yielding once they are less busy than this
	// deferOthers: start deferring once the CPUs were at least this busy
	// with processes other than this one. Below enterBusy because the
	// probe decides; above what a drain's own store sessions and receivers
	// usually take (about two thirds of two cores here), so that a drain
	// is not probed every few seconds.
	deferOthers = 0.80
)

// Probe back-off, in intervals: after a deferral that the CPUs did not
// need (they emptied at once), the next one waits firstBackoff intervals,
// doubling up to maxBackoff; a deferral that held resets it.
const (
	firstBackoff = 10
	maxBackoff   = 320
)

// DefaultInterval is how often Run samples the CPUs and the lag.
const DefaultInterval = time.Second

// Options configure Run.
type Options struct {
	// MaxLag is how far behind the source walhook may fall while it
	// yields. Must be positive.
	MaxLag time.Duration
	// Lag reports how far behind the source walhook is now (0 when it
	// does not know, e.g. while another process holds the slot).
	Lag func() time.Duration
	// Interval between samples; DefaultInterval when zero.
	Interval time.Duration
	// Log receives the decisions; required.
	Log *slog.Logger
	// Yielding, when set, is called with every change of policy.
	Yielding func(bool)
	// Defer, when set, is called with every change of deferral: while
	// true, the caller should take no new work from the source. Deferring
	// happens only while yielding, so it also ends once MaxLag behind.
	Defer func(bool)

	// busy replaces the /proc/stat meter in tests.
	busy func() (load, bool)
}

// load is how busy the CPUs were over one interval, as fractions of all
// CPU time: all processes (busy), and this process alone (own).
type load struct{ busy, own float64 }

// state is what the controller decided last.
type state struct {
	yielding  bool // threads run SCHED_IDLE
	behind    bool // past MaxLag, until back under half of it
	deferring bool // the caller takes no new work
	held      int  // intervals the current deferral has lasted
	wait      int  // intervals before the next deferral may start
	backoff   int  // wait after the next deferral the CPUs do not need
}

// next decides the policy for the coming interval from the CPUs' load over
// the last one (ok false when it could not be measured) and the lag.
func next(s state, l load, ok bool, lag, maxLag time.Duration) state {
	switch {
	case lag > maxLag:
		s.behind = true
	case lag <= maxLag/2:
		s.behind = false
	}
	switch {
	case s.behind || !ok:
		s.yielding = false
	case s.yielding:
		s.yielding = l.busy >= leaveBusy
	default:
		s.yielding = l.busy >= enterBusy
	}
	if s.backoff == 0 {
		s.backoff = firstBackoff
	}
	switch {
	case s.deferring && !s.yielding:
		if s.held == 0 && ok && !s.behind {
			// The CPUs emptied as soon as walhook paused: the load was
			// its own. Probe again later, and later after every miss.
			s.wait, s.backoff = s.backoff, min(2*s.backoff, maxBackoff)
		} else {
			s.backoff = firstBackoff
		}
		s.deferring, s.held = false, 0
	case s.deferring:
		s.held++
	case s.wait > 0:
		s.wait--
	case s.yielding && l.busy-l.own >= deferOthers:
		s.deferring = true
	}
	return s
}

// Available reports whether Run would act in this process, or why not:
// the scheduling policy cannot be read here, the process was started at
// another priority (left as it is), or it could not raise its priority
// back once behind. The error reads after "cpu.yield: off, ".
func Available() error {
	start, err := currentPolicy()
	if err != nil {
		return &offError{"the scheduling policy cannot be read or changed here", err}
	}
	if start.policy != policyNormal || start.nice != 0 {
		return &offError{"the process was started with its own priority (" + start.String() + "); it is left as it is", nil}
	}
	if err := probeRestore(); err != nil {
		return &offError{"this process could not raise its priority back once behind " +
			"(it needs CAP_SYS_NICE, or RLIMIT_NICE of at least 20: systemd LimitNICE=+0, docker --ulimit nice=20:20 or --cap-add SYS_NICE)", err}
	}
	return nil
}

// offError is why Run does not act; Unwrap gives the system's error.
type offError struct {
	why string
	err error
}

func (e *offError) Error() string { return e.why }
func (e *offError) Unwrap() error { return e.err }

// errUnsupported: this platform has no SCHED_IDLE.
var errUnsupported = errors.New("not supported on this platform")

// Run controls the process's CPU priority until ctx ends, and then leaves
// it at normal priority. It must be the only code in the process that
// changes scheduling policies. It returns nil when ctx ends, and also at
// once (after logging why) when it may not or need not act.
func Run(ctx context.Context, o Options) error {
	if o.MaxLag <= 0 {
		return fmt.Errorf("cpuyield: MaxLag must be positive, got %s", o.MaxLag)
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if err := Available(); err != nil {
		var attrs []any
		if sys := errors.Unwrap(err); sys != nil {
			attrs = append(attrs, slog.Any("error", sys))
		}
		o.Log.Info("cpu.yield: off, "+err.Error(), attrs...)
		return nil
	}
	busy := o.busy
	if busy == nil {
		m := &procStat{path: "/proc/stat", self: "/proc/self/stat"}
		m.sample() // the first sample only sets the baseline
		busy = m.sample
	}
	o.Log.Debug("cpu.yield: on", slog.Duration("max_lag", o.MaxLag))

	var s state
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	defer func() {
		s = leave(s, o)
		if s.yielding {
			if err := restoreAll(); err != nil {
				o.Log.Warn("cpu.yield: could not restore normal priority", slog.Any("error", err))
			}
			if o.Yielding != nil {
				o.Yielding(false)
			}
		}
	}()
	var deferredAt time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, ok := busy()
		lag := o.Lag()
		n := next(s, b, ok, lag, o.MaxLag)
		switch {
		case n.deferring && !s.deferring:
			deferredAt = time.Now()
			o.Log.Debug("cpu.yield: CPUs busy with other processes; deferring new changes to see whether they stay busy",
				slog.Float64("busy", b.busy), slog.Float64("own", b.own))
		case n.held == 1:
			o.Log.Info("cpu.yield: the CPUs stay busy without walhook; deferring new changes until they have time to spare or walhook is cpu.max_lag behind",
				slog.Float64("busy", b.busy), slog.Duration("max_lag", o.MaxLag))
		case s.held > 0 && !n.deferring:
			o.Log.Info("cpu.yield: taking new changes again", slog.Duration("deferred", time.Since(deferredAt).Round(time.Millisecond)),
				slog.Duration("lag", lag.Round(time.Millisecond)), slog.Float64("busy", b.busy), slog.Bool("behind", n.behind))
		case s.deferring && !n.deferring && n.wait > 0:
			o.Log.Debug("cpu.yield: the CPUs emptied once walhook paused, the load was its own; taking new changes again",
				slog.Float64("busy", b.busy), slog.Int("next_probe_in_intervals", n.wait))
		}
		if n.deferring != s.deferring && o.Defer != nil {
			o.Defer(n.deferring)
		}
		if n.behind != s.behind {
			if n.behind {
				o.Log.Info("cpu.yield: behind the source by more than cpu.max_lag; taking a normal CPU share until caught up",
					slog.Duration("lag", lag.Round(time.Millisecond)), slog.Duration("max_lag", o.MaxLag))
			} else {
				o.Log.Info("cpu.yield: caught up; yielding the CPU again while it is busy",
					slog.Duration("lag", lag.Round(time.Millisecond)))
			}
		}
		// While yielding, applied every interval, not only on a change:
		// a thread the Go runtime starts inherits the policy of the thread
		// that starts it, which may have been set a moment later. At
		// normal priority the threads are left alone (an operator's
		// renice stands) once restoreAll has seen every one back.
		var err error
		switch {
		case n.yielding:
			err = setAll(true)
		case s.yielding:
			err = restoreAll()
		}
		if err != nil {
			o.Log.Warn("cpu.yield: could not change the scheduling policy; off until restart, at normal priority",
				slog.Any("error", err))
			leave(n, o)
			if rerr := restoreAll(); rerr != nil {
				return fmt.Errorf("cpu.yield: restore normal priority: %w", rerr)
			}
			if s.yielding && o.Yielding != nil {
				o.Yielding(false)
			}
			s = state{}
			return nil
		}
		if n.yielding != s.yielding {
			o.Log.Debug("cpu.yield: policy changed", slog.Bool("yielding", n.yielding),
				slog.Float64("busy", b.busy), slog.Duration("lag", lag.Round(time.Millisecond)))
			if o.Yielding != nil {
				o.Yielding(n.yielding)
			}
		}
		s = n
	}
}

// leave ends a deferral (telling the caller) and returns the state without it.
func leave(s state, o Options) state {
	if s.deferring && o.Defer != nil {
		o.Defer(false)
	}
	s.deferring, s.held = false, 0
	return s
}

// procStat measures how busy all CPUs were between two reads of /proc/stat,
// and how much of that was this process (/proc/self/stat).
type procStat struct {
	path, self       string
	idle, total, own uint64
	ok               bool
}

// sample returns the load since the previous sample; ok is false for the
// first sample and when the files cannot be read.
func (p *procStat) sample() (load, bool) {
	idle, total, err := readCPUTimes(p.path)
	var own uint64
	if err == nil {
		own, err = readOwnTime(p.self)
	}
	if err != nil {
		p.ok = false
		return load{}, false
	}
	prevIdle, prevTotal, prevOwn, had := p.idle, p.total, p.own, p.ok
	p.idle, p.total, p.own, p.ok = idle, total, own, true
	if !had || total <= prevTotal || idle < prevIdle || own < prevOwn {
		return load{}, false
	}
	dt := total - prevTotal
	di := min(idle-prevIdle, dt)
	busy := 1 - float64(di)/float64(dt)
	return load{busy: busy, own: min(float64(own-prevOwn)/float64(dt), busy)}, true
}

// readOwnTime reads utime + stime (clock ticks, the unit of /proc/stat)
// from a /proc/<pid>/stat file.
func readOwnTime(path string) (uint64, error) {
	b, err := readFile(path)
	if err != nil {
		return 0, err
	}
	return parseOwnTime(string(b))
}

func parseOwnTime(stat string) (uint64, error) {
	// The command name (field 2) is in parentheses and may hold anything,
	// spaces and parentheses included: count fields after the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/self/stat: %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc/self/stat: %d fields after the command name", len(f))
	}
	var sum uint64
	for _, s := range f[11:13] { // fields 14 and 15: utime, stime
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected utime or stime in /proc/self/stat: %q", s)
		}
		sum += v
	}
	return sum, nil
}

// readCPUTimes reads the aggregate "cpu" line of /proc/stat: idle is idle
// plus iowait, total is every field up to steal (guest time is counted
// within user and nice already).
func readCPUTimes(path string) (idle, total uint64, err error) {
	b, err := readFile(path)
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseCPULine(line)
}

func parseCPULine(line string) (idle, total uint64, err error) {
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("unexpected first line in /proc/stat: %q", line)
	}
	for i, s := range f[1:min(len(f), 9)] { // user nice system idle iowait irq softirq steal
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("unexpected field %d in /proc/stat's cpu line: %q", i+1, s)
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total, nil
}
