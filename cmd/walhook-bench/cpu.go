package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPU accounting for the saturation measures. On a machine whose cores
// are shared and stolen from, a rate moves with the neighbours; the CPU
// time spent per delivery moves much less, so the table gives both.

// clockTick is Linux's USER_HZ, the unit of /proc's CPU times (100 on
// every architecture Go supports on Linux).
const clockTick = 10 * time.Millisecond

// machineBusy returns the CPU time the machine has spent busy since boot:
// user, nice, system, irq and softirq of every core, from /proc/stat
// (idle, iowait and steal are not work done here). ok is false where
// /proc/stat cannot be read.
func machineBusy() (busy time.Duration, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, false
	}
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system (idle iowait) irq softirq
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, false
		}
		busy += time.Duration(n) * clockTick
	}
	return busy, true
}

// processCPU returns the user + system CPU time of process pid so far,
// from /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after its closing one.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 { // state is f[0]; utime and stime are fields 14 and 15
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * clockTick, true
}

// cpuMeter measures the machine's busy time over a span.
type cpuMeter struct {
	start  time.Duration
	ok     bool
	self   time.Duration // this process's CPU time at the start
	selfOK bool
}

func startCPU() cpuMeter {
	b, ok := machineBusy()
	s, sok := processCPU(os.Getpid())
	return cpuMeter{start: b, ok: ok, self: s, selfOK: sok}
}

// since returns the busy time since the meter started (0 if unknown).
func (m cpuMeter) since() time.Duration {
	b, ok := machineBusy()
	if !m.ok || !ok {
		return 0
	}
	return b - m.start
}

// selfSince returns the CPU time this process (the bench: the receiver,
// and in the bare loop the client too) has spent since the meter started
// (0 if unknown).
func (m cpuMeter) selfSince() time.Duration {
	s, ok := processCPU(os.Getpid())
	if !m.selfOK || !ok {
		return 0
	}
	return s - m.self
}

// perDelivery formats CPU time per delivery in µs, or "n/a".
func perDelivery(cpu time.Duration, n int) string {
	if cpu <= 0 || n <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f µs", float64(cpu.Microseconds())/float64(n))
}

// peakRSS returns the most resident memory process pid has had (VmHWM in
// /proc/<pid>/status), in bytes.
func peakRSS(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, false
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			return n << 10, err == nil
		}
	}
	return 0, false
}
