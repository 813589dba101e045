// Package cpuyield lets walhook give way to the database and the
// application on CPUs it shares with them.
//
// While the machine's CPUs are busy and walhook is less than a lag bound
// behind the source, every thread of the process runs under Linux's
// SCHED_IDLE policy: the kernel then gives walhook only the CPU time that
// no normally scheduled process wants. Once walhook trails the source by
// more than the bound, or the CPUs have time to spare, its threads run at
// normal priority again, so a saturated machine can delay webhooks by
// about the bound but never leave the slot ever further behind.
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

	// busy replaces the /proc/stat meter in tests.
	busy func() (float64, bool)
}

// state is what the controller decided last.
type state struct {
	yielding bool // threads run SCHED_IDLE
	behind   bool // past MaxLag, until back under half of it
}

// next decides the policy for the coming interval from the CPUs' busy
// fraction over the last one (busyOK false when it could not be measured)
// and the lag.
func next(s state, busy float64, busyOK bool, lag, maxLag time.Duration) state {
	switch {
	case lag > maxLag:
		s.behind = true
	case lag <= maxLag/2:
		s.behind = false
	}
	switch {
	case s.behind || !busyOK:
		s.yielding = false
	case s.yielding:
		s.yielding = busy >= leaveBusy
	default:
		s.yielding = busy >= enterBusy
	}
	return s
}

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
	start, err := currentPolicy()
	if err != nil {
		o.Log.Info("cpu.yield: off, the scheduling policy cannot be read or changed here", slog.Any("error", err))
		return nil
	}
	if start.policy != policyNormal || start.nice != 0 {
		o.Log.Info("cpu.yield: off, the process was started with its own priority; it is left as it is",
			slog.String("policy", start.String()))
		return nil
	}
	if err := probeRestore(); err != nil {
		o.Log.Info("cpu.yield: off, this process could not raise its priority back once behind "+
			"(it needs CAP_SYS_NICE, or RLIMIT_NICE of at least 20: systemd LimitNICE=+0, docker --ulimit nice=20:20 or --cap-add SYS_NICE)",
			slog.Any("error", err))
		return nil
	}
	busy := o.busy
	if busy == nil {
		m := &procStat{path: "/proc/stat"}
		m.sample() // the first sample only sets the baseline
		busy = m.sample
	}
	o.Log.Debug("cpu.yield: on", slog.Duration("max_lag", o.MaxLag))

	var s state
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	defer func() {
		if s.yielding {
			if err := restoreAll(); err != nil {
				o.Log.Warn("cpu.yield: could not restore normal priority", slog.Any("error", err))
			}
			if o.Yielding != nil {
				o.Yielding(false)
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b, ok := busy()
		lag := o.Lag()
		n := next(s, b, ok, lag, o.MaxLag)
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
				slog.Float64("busy", b), slog.Duration("lag", lag.Round(time.Millisecond)))
			if o.Yielding != nil {
				o.Yielding(n.yielding)
			}
		}
		s = n
	}
}

// procStat measures how busy all CPUs were between two reads of /proc/stat.
type procStat struct {
	path        string
	idle, total uint64
	ok          bool
}

// sample returns the busy fraction since the previous sample; ok is false
// for the first sample and when the file cannot be read.
func (p *procStat) sample() (float64, bool) {
	idle, total, err := readCPUTimes(p.path)
	if err != nil {
		p.ok = false
		return 0, false
	}
	prevIdle, prevTotal, had := p.idle, p.total, p.ok
	p.idle, p.total, p.ok = idle, total, true
	if !had || total <= prevTotal || idle < prevIdle {
		return 0, false
	}
	dt := total - prevTotal
	di := min(idle-prevIdle, dt)
	return 1 - float64(di)/float64(dt), true
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
