package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
)

// walhook run offers no profiling flag, so for --cpuprofile the bench
// builds its walhook with one extra file laid over package main by
// `go build -overlay` (the checkout is not touched). When the environment
// names a file and an address, the file's init starts a CPU profile at once
// (so it covers the whole saturation measure, start-up included) and
// serves GET /stop, which ends it.
const profileHook = `package main

import (
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"sync"
)

func init() {
	file, addr := os.Getenv("WALHOOK_BENCH_CPUPROFILE"), os.Getenv("WALHOOK_BENCH_PROFILE_ADDR")
	if file == "" || addr == "" {
		return
	}
	f, err := os.Create(file)
	if err != nil {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		f.Close()
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return
	}
	var once sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("/stop", func(w http.ResponseWriter, _ *http.Request) {
		once.Do(func() { pprof.StopCPUProfile(); f.Close() })
		w.WriteHeader(http.StatusNoContent)
	})
	go http.Serve(ln, mux)
}
`

// buildProfiling builds ./cmd/walhook with profileHook added.
func buildProfiling(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	hook := filepath.Join(dir, "bench_profile_hook.go")
	if err := os.WriteFile(hook, []byte(profileHook), 0o644); err != nil {
		return "", err
	}
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {
		filepath.Join(root, "cmd", "walhook", "zz_bench_profile_hook.go"): hook,
	}})
	if err != nil {
		return "", err
	}
	ovFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(ovFile, overlay, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "walhook")
	cmd := exec.CommandContext(ctx, "go", "build", "-overlay", ovFile, "-o", out, "./cmd/walhook")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -overlay ./cmd/walhook: %w\n%s", err, b)
	}
	return out, nil
}

// profiler is the profile of one `walhook run`.
type profiler struct {
	file, addr string
}

func newProfiler(file string) (*profiler, error) {
	addr, err := freeLoopback()
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	return &profiler{file: abs, addr: addr}, nil
}

func (p *profiler) env() []string {
	return []string{"WALHOOK_BENCH_CPUPROFILE=" + p.file, "WALHOOK_BENCH_PROFILE_ADDR=" + p.addr}
}

// stop ends the profile and writes `go tool pprof -top` next to it.
func (p *profiler) stop(ctx context.Context, binary string) (string, error) {
	resp, err := http.Get("http://" + p.addr + "/stop")
	if err != nil {
		return "", fmt.Errorf("stop cpu profile: %w", err)
	}
	resp.Body.Close()
	top := p.file + ".top.txt"
	var all []byte
	for _, sort := range []string{"-flat", "-cum"} {
		out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", sort, "-nodecount=45", binary, p.file).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go tool pprof: %w\n%s", err, out)
		}
		all = append(append(all, out...), '\n')
	}
	return top, os.WriteFile(top, all, 0o644)
}
