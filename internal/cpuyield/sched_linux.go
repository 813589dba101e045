//go:build linux

package cpuyield

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

const (
	policyNormal = unix.SCHED_NORMAL
	policyIdle   = unix.SCHED_IDLE
)

var readFile = os.ReadFile

// policy is a thread's scheduling policy and nice value.
type policy struct {
	policy uint32
	nice   int32
}

func (p policy) String() string {
	names := map[uint32]string{unix.SCHED_NORMAL: "normal", unix.SCHED_FIFO: "fifo", unix.SCHED_RR: "rr",
		unix.SCHED_BATCH: "batch", unix.SCHED_IDLE: "idle", unix.SCHED_DEADLINE: "deadline"}
	name, ok := names[p.policy]
	if !ok {
		name = strconv.Itoa(int(p.policy))
	}
	return fmt.Sprintf("%s, nice %d", name, p.nice)
}

// threadPolicy reads one thread's policy (tid 0: the calling thread).
func threadPolicy(tid int) (policy, error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return policy{}, err
	}
	return policy{policy: a.Policy, nice: a.Nice}, nil
}

// currentPolicy is the policy of the thread Run was called on, which the
// process started with (walhook changes no policy before Run).
func currentPolicy() (policy, error) { return threadPolicy(0) }

// setThread puts one thread under SCHED_IDLE or back under SCHED_NORMAL at
// nice 0.
func setThread(tid int, idle bool) error {
	a := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policyNormal}
	if idle {
		a.Policy = policyIdle
	}
	return unix.SchedSetAttr(tid, a, 0)
}

// setAll applies the policy to every thread of the process. Threads that
// exit meanwhile are skipped.
func setAll(idle bool) error {
	tids, err := threads()
	if err != nil {
		return err
	}
	for _, tid := range tids {
		if err := setThread(tid, idle); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
	}
	return nil
}

// restoreAll brings every thread back to normal priority. A thread the
// runtime starts while the first pass runs may inherit SCHED_IDLE from a
// thread not yet restored; later passes catch it.
func restoreAll() error {
	for range 3 {
		if err := setAll(false); err != nil {
			return err
		}
		tids, err := threads()
		if err != nil {
			return err
		}
		idle := false
		for _, tid := range tids {
			if p, err := threadPolicy(tid); err == nil && p.policy != policyNormal {
				idle = true
			}
		}
		if !idle {
			return nil
		}
	}
	return errors.New("a thread stayed under SCHED_IDLE")
}

// threads lists the process's thread ids.
func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// mayRestore is the kernel's rule for leaving SCHED_IDLE for nice 0:
// CAP_SYS_NICE, or an RLIMIT_NICE of at least 20.
func mayRestore() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err == nil && caps[0].Effective&(1<<unix.CAP_SYS_NICE) != 0 {
		return nil
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NICE, &rl); err != nil {
		return fmt.Errorf("RLIMIT_NICE: %w", err)
	}
	if rl.Cur >= 20 {
		return nil
	}
	return fmt.Errorf("no CAP_SYS_NICE and RLIMIT_NICE is %d", rl.Cur)
}

// probeRestore checks that the process may go idle and come back to
// normal priority: by the kernel's rule first (so that an unprivileged
// process changes nothing), then by trying, on a thread of its own, in
// case a namespace or security module says otherwise. A thread it could
// not bring back is not returned to the Go runtime: its goroutine ends
// locked to it, and the runtime ends the thread (or, for the main thread,
// parks it for good).
func probeRestore() error {
	if err := mayRestore(); err != nil {
		return err
	}
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := setThread(0, true); err != nil {
			res <- fmt.Errorf("set SCHED_IDLE: %w", err)
			return
		}
		if err := setThread(0, false); err != nil {
			res <- fmt.Errorf("leave SCHED_IDLE: %w", err)
			return
		}
		runtime.UnlockOSThread()
		res <- nil
	}()
	return <-res
}
