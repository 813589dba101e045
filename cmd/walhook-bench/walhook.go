package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/config"
)

// buildWalhook builds ./cmd/walhook of the checkout into dir.
func buildWalhook(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "walhook")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/walhook")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/walhook: %w\n%s", err, b)
	}
	return out, nil
}

// session is one walhook configuration: its own publication, slot and
// store schema, so measures never see each other's WAL or outbox.
type session struct {
	e       *env
	name    string
	cfg     string
	apiAddr string
	logFile string
	env     []string // added to walhook run's environment
}

// newSession writes a config for the sample mapping with the receiver as the
// only (static) endpoint. The rules are the sample's `events:` unchanged.
func (e *env) newSession(label string, cpuYield bool) (*session, error) {
	e.seq++
	s := &session{e: e, name: fmt.Sprintf("walhook_%s%d", label, e.seq)}
	s.cfg = filepath.Join(e.dir, s.name+".yaml")
	s.logFile = filepath.Join(e.dir, s.name+".log")

	src, err := os.ReadFile(filepath.Join(e.samples, "walhook.yaml"))
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s/walhook.yaml: not a YAML mapping (%v)", e.samples, err)
	}
	var events *yaml.Node
	for i := 0; i+1 < len(doc.Content[0].Content); i += 2 {
		if doc.Content[0].Content[i].Value == "events" {
			events = doc.Content[0].Content[i+1]
		}
	}
	if events == nil {
		return nil, fmt.Errorf("%s/walhook.yaml: no events", e.samples)
	}
	if s.apiAddr, err = freeLoopback(); err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"source": map[string]any{"dsn": e.dsn, "publication": s.name, "slot": s.name},
		"store":  map[string]any{"dsn": e.storeDSN, "schema": s.name},
		"mapping": map[string]any{
			"envelope": "auction-excellence",
		},
		"delivery": map[string]any{
			"user_agent":                 "AuctionExcellence-Webhook/1.0",
			"allow":                      []string{"127.0.0.1"},
			"workers":                    e.o.concurrency,
			"max_in_flight_per_endpoint": e.o.concurrency,
			"timeout":                    "10s",
		},
		"api": map[string]any{"listen": s.apiAddr, "keys": []string{"sk_bench_" + newUUID()}},
		"log": map[string]any{"level": "warn"},
		"cpu": map[string]any{"yield": cpuYield},
		"endpoints": []map[string]any{{
			"id": "bench", "url": e.rcvURL, "secret": e.secret,
			"description": "walhook-bench's verifying receiver",
		}},
		"events": events,
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(s.cfg, out, 0o600); err != nil {
		return nil, err
	}
	// The same strict loader walhook uses: a bad bench config fails here
	// with file:line, not as an exit status of a subprocess.
	if _, err := config.Load(s.cfg, os.LookupEnv); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	return s, nil
}

// command runs `walhook <cmd> --config F args…` to completion.
func (s *session) command(ctx context.Context, cmd string, args ...string) error {
	c := exec.CommandContext(ctx, s.e.walhook, append([]string{cmd, "--config", s.cfg}, args...)...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return fmt.Errorf("walhook %s (%s): %w\n%s", cmd, s.name, err, strings.TrimSpace(out.String()))
	}
	return nil
}

func (s *session) setup(ctx context.Context) error { return s.command(ctx, "setup") }

// teardown drops the slot, publication and store schema so no WAL is
// retained for a finished measure. A slot teardown could not drop is
// dropped here, because an inactive slot would hold WAL for the rest of the
// run.
func (s *session) teardown(ctx context.Context) {
	if err := s.command(ctx, "teardown", "--store", "--force"); err != nil {
		s.e.say("warning: %v", err)
	}
	_ = s.e.cluster.Exec(ctx, s.e.db, fmt.Sprintf(`
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%[1]s' AND NOT active;
DROP PUBLICATION IF EXISTS %[1]s;
DROP SCHEMA IF EXISTS %[1]s CASCADE;`, s.name))
}

// proc is a running `walhook run`.
type proc struct {
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	log   string
	start time.Time
}

// run starts `walhook run` with its logs in the session's log file.
func (s *session) run() (*proc, error) {
	logf, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	args := append([]string{"run", "--config", s.cfg}, s.e.o.runArgs...)
	c := exec.Command(s.e.walhook, args...)
	c.Stdout, c.Stderr = logf, logf
	c.Env = append(os.Environ(), s.env...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{cmd: c, done: make(chan struct{}), log: s.logFile}
	p.start = time.Now()
	if err := c.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start walhook run: %w", err)
	}
	go func() {
		p.err = c.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports an error when the process is no longer running.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("walhook run exited early (%v); log tail:\n%s", p.err, tail(p.log))
	default:
		return nil
	}
}

// stop sends SIGTERM (a graceful stop), and SIGKILL after 30 s.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("walhook run did not stop within 30s of SIGTERM; log tail:\n%s", tail(p.log))
	}
	var ee *exec.ExitError
	if p.err != nil && !(errors.As(p.err, &ee) && ee.ExitCode() == 0) {
		return fmt.Errorf("walhook run: %v; log tail:\n%s", p.err, tail(p.log))
	}
	return nil
}

// ready waits until walhook's /readyz answers 200.
func (s *session) ready(ctx context.Context, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := p.exited(); err != nil {
			return err
		}
		if resp, err := http.Get("http://" + s.apiAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("walhook run not ready within %s; log tail:\n%s", timeout, tail(p.log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func tail(file string) string {
	b, _ := os.ReadFile(file)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func freeLoopback() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
