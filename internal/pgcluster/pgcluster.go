// Package pgcluster starts throwaway PostgreSQL clusters from the locally
// installed server binaries: for tests (through internal/pgtest), for
// `walhook demo` and for the benchmark.
//
// Clusters run as the postgres OS user when the process runs as root,
// because initdb refuses to run as root. The postmaster is a direct child
// of the process with a parent-death signal, so a process that is killed
// does not leave a server behind.
//
// It does not import package testing, so that the walhook binary (demo)
// does not link it; internal/pgtest adds the test-binary helpers.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstallHint is printed when no server binaries are found.
const InstallHint = "PostgreSQL server binaries (initdb, postgres) not found: " +
	"install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16) " +
	"or point PG_BIN at the directory that holds initdb"

// Options change how a cluster is configured. The zero value gives a cluster
// ready for logical replication.
type Options struct {
	// Settings are extra postgresql.conf lines, applied after the defaults
	// (so they win): e.g. {"wal_level": "replica"}.
	Settings map[string]string
	// Private serves the cluster on its Unix socket only, in the cluster's
	// own directory (mode 0700, owned by the OS user the server runs as),
	// not on 127.0.0.1: authentication is trust, so over TCP every user of
	// the machine could connect as the superuser. DSN and DSNAs then name
	// the socket. For `walhook demo`; tests use TCP.
	Private bool
}

// Cluster is one running PostgreSQL server.
type Cluster struct {
	BinDir    string
	DataDir   string
	SocketDir string
	Port      int
	LogFile   string

	root    string
	private bool // Options.Private
	cred    *syscall.Credential
	mu      sync.Mutex
	cmd     *exec.Cmd
	waitErr chan error
}

// FindBinDir returns the directory holding initdb and postgres: $PG_BIN,
// then PATH, then `pg_config --bindir`, then /usr/lib/postgresql/*/bin and
// /usr/local/pgsql/bin, newest version first.
func FindBinDir() (string, error) {
	ok := func(dir string) bool {
		for _, b := range []string{"initdb", "postgres", "pg_ctl"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	var looked []string
	if d := os.Getenv("PG_BIN"); d != "" {
		if ok(d) {
			return d, nil
		}
		return "", fmt.Errorf("PG_BIN=%s does not hold initdb, postgres and pg_ctl; %s", d, InstallHint)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(p)
		if r, err := filepath.EvalSymlinks(p); err == nil {
			d = filepath.Dir(r)
		}
		if ok(d) {
			return d, nil
		}
		looked = append(looked, d)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if ok(d) {
			return d, nil
		}
		looked = append(looked, d)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	dirs = append(dirs, "/usr/local/pgsql/bin")
	for _, d := range dirs {
		if ok(d) {
			return d, nil
		}
		looked = append(looked, d)
	}
	return "", fmt.Errorf("%s (looked in $PG_BIN, PATH, pg_config --bindir, %s)", InstallHint, strings.Join(looked, ", "))
}

func versionOf(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// Start initialises and starts a new cluster in a fresh temporary directory.
// Call Stop (or Remove) when done.
func Start(opts Options) (*Cluster, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "walhook-pgtest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{BinDir: bin, root: root, DataDir: filepath.Join(root, "data"),
		SocketDir: root, LogFile: filepath.Join(root, "postgres.log"), private: opts.Private}
	if err := c.init(opts); err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	if err := c.start(); err != nil {
		c.Remove()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) init(opts Options) error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root, and initdb refuses root: create a 'postgres' OS user or run tests as another user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(c.root, uid, gid); err != nil {
			return err
		}
		// Parents must be traversable by the postgres user.
		for d := filepath.Dir(c.root); d != "/"; d = filepath.Dir(d) {
			if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
				os.Chmod(d, fi.Mode().Perm()|0o011)
			}
		}
	}
	out, err := c.command("initdb", "-D", c.DataDir, "--auth=trust", "--no-sync",
		"--username=postgres", "--encoding=UTF8", "--locale=C").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.Port = port
	settings := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": "'" + c.SocketDir + "'",
		"wal_level":               "logical",
		"max_replication_slots":   "32",
		"max_wal_senders":         "32",
		"max_connections":         "200",
		"fsync":                   "off",
		"full_page_writes":        "off",
		"shared_buffers":          "128MB",
		"wal_sender_timeout":      "60s",
		"log_min_messages":        "warning",
		"logging_collector":       "off",
	}
	if opts.Private {
		settings["listen_addresses"] = "''"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	return c.writeConf(settings)
}

func (c *Cluster) writeConf(settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	f, err := os.OpenFile(filepath.Join(c.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString("\n# pgtest\n" + b.String())
	return err
}

// SetConf appends settings to postgresql.conf. They take effect on Reload or
// Restart, depending on the setting.
func (c *Cluster) SetConf(settings map[string]string) error { return c.writeConf(settings) }

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.BinDir, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

func (c *Cluster) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("pgcluster: cluster already running")
	}
	logf, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := c.command("postgres", "-D", c.DataDir)
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	c.cmd = cmd
	c.waitErr = make(chan error, 1)
	go func() { c.waitErr <- cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), c.DSN("postgres"))
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case werr := <-c.waitErr:
			c.cmd = nil
			return fmt.Errorf("postgres exited during start: %v\n%s", werr, c.TailLog())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within 60s: %v\n%s", err, c.TailLog())
		}
	}
}

// TailLog is the end of the server log (the last 4,000 bytes).
func (c *Cluster) TailLog() string {
	b, _ := os.ReadFile(c.LogFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop signals the postmaster: SIGINT is a fast shutdown, SIGQUIT an immediate
// one (pg_ctl stop -m immediate: no checkpoint, crash recovery on next start).
func (c *Cluster) stop(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.waitErr:
	case <-time.After(60 * time.Second):
		// A shutdown that hangs is what a test may be looking for (a
		// walsender waiting for a client that never confirms): say so.
		_ = c.cmd.Process.Kill()
		<-c.waitErr
		c.cmd = nil
		return fmt.Errorf("pgcluster: postgres did not shut down within 60s of %s; killed it\n%s", sig, c.TailLog())
	}
	c.cmd = nil
	return nil
}

// Stop shuts the server down (fast mode) and keeps the data directory.
func (c *Cluster) Stop() error { return c.stop(syscall.SIGINT) }

// Restart stops the server cleanly and starts it again on the same port.
func (c *Cluster) Restart() error {
	if err := c.stop(syscall.SIGINT); err != nil {
		return err
	}
	return c.start()
}

// Crash stops the server like `pg_ctl stop -m immediate` (no shutdown
// checkpoint; crash recovery on the next start). Call Start again to recover.
func (c *Cluster) Crash() error { return c.stop(syscall.SIGQUIT) }

// StartAgain starts a stopped or crashed cluster.
func (c *Cluster) StartAgain() error { return c.start() }

// Reload asks the server to re-read its configuration (SIGHUP).
func (c *Cluster) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return errors.New("pgcluster: cluster not running")
	}
	return c.cmd.Process.Signal(syscall.SIGHUP)
}

// StartStandby starts a streaming standby of c (pg_basebackup -R) on a
// port and directory of its own; Promote makes it a primary on the next
// timeline. The caller removes it.
func (c *Cluster) StartStandby() (*Cluster, error) {
	root, err := os.MkdirTemp("", "walhook-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Cluster{BinDir: c.BinDir, root: root, DataDir: filepath.Join(root, "data"),
		SocketDir: root, LogFile: filepath.Join(root, "postgres.log"), cred: c.cred, private: c.private}
	if c.cred != nil {
		if err := os.Chown(root, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(root)
			return nil, err
		}
	}
	out, err := s.command("pg_basebackup", "-D", s.DataDir, "-h", c.SocketDir, "-p", strconv.Itoa(c.Port),
		"-U", "postgres", "-R", "-X", "stream", "--no-sync").CombinedOutput()
	if err != nil {
		os.RemoveAll(root)
		return nil, fmt.Errorf("pg_basebackup: %w: %s", err, out)
	}
	if s.Port, err = freePort(); err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	if err := s.writeConf(map[string]string{"port": strconv.Itoa(s.Port),
		"unix_socket_directories": "'" + s.SocketDir + "'"}); err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Remove()
		return nil, err
	}
	return s, nil
}

// Promote ends a standby's recovery (pg_promote, waiting for it): it
// starts the next timeline and takes writes.
func (c *Cluster) Promote(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_promote(true, 60)`).Scan(&ok); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if !ok {
		return errors.New("promote: not promoted within 60s")
	}
	return nil
}

// Remove stops the server and deletes its directory.
func (c *Cluster) Remove() error {
	c.stop(syscall.SIGINT)
	return os.RemoveAll(c.root)
}

// DSN returns a URL for database db as the superuser postgres over TCP
// (over the Unix socket when the cluster is private).
func (c *Cluster) DSN(db string) string { return c.DSNAs("postgres", db) }

// DSNAs returns a URL for database db as role user (trust authentication),
// over TCP, or over the Unix socket when the cluster is private.
func (c *Cluster) DSNAs(user, db string) string {
	if c.private {
		return fmt.Sprintf("postgres://%s@/%s?host=%s&port=%d&sslmode=disable", user, db, url.QueryEscape(c.SocketDir), c.Port)
	}
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, c.Port, db)
}

// Exec runs SQL (several statements allowed) in database db as superuser.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, c.DSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

var dbSeq atomic.Int64

// CreateDatabase creates a new empty database and returns its name.
func (c *Cluster) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return name, nil
}

// DropDatabase drops a database, first ending its sessions and walsenders and
// dropping its replication slots (DROP DATABASE refuses while slots exist).
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for i := 0; i < 50; i++ {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		var left int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left)
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// TB is the part of testing.TB that NewDatabase needs.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// NewDatabase creates a fresh database for one test and drops it when the
// test ends. It returns the database's DSN.
func (c *Cluster) NewDatabase(t TB) string {
	t.Helper()
	ctx := context.Background()
	name, err := c.CreateDatabase(ctx)
	if err != nil {
		t.Fatalf("pgcluster: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := c.DropDatabase(context.Background(), name); err != nil {
			t.Logf("pgcluster: drop database %s: %v", name, err)
		}
	})
	return c.DSN(name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Upgrade stops the cluster, moves it with pg_upgrade (from and to its own
// binaries, --link or a copy) to a new data directory initialised like
// the first, and starts it there on the same port. Between the same
// binaries it does to the cluster what a major-version upgrade does: a new
// system identifier, no logical slots carried over (PostgreSQL 16 and
// older), the WAL going on from a new segment. It returns pg_upgrade's
// output.
func (c *Cluster) Upgrade(link bool) (string, error) {
	if err := c.Stop(); err != nil {
		return "", err
	}
	oldConf, err := os.ReadFile(filepath.Join(c.DataDir, "postgresql.conf"))
	if err != nil {
		return "", err
	}
	newData := c.DataDir + "-upgraded"
	out, err := c.command("initdb", "-D", newData, "--auth=trust", "--no-sync",
		"--username=postgres", "--encoding=UTF8", "--locale=C").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("initdb: %w: %s", err, out)
	}
	oldPort, err := freePort()
	if err != nil {
		return "", err
	}
	newPort, err := freePort()
	if err != nil {
		return "", err
	}
	args := []string{"-b", c.BinDir, "-B", c.BinDir, "-d", c.DataDir, "-D", newData, "-U", "postgres",
		"-p", strconv.Itoa(oldPort), "-P", strconv.Itoa(newPort), "-s", c.root, "--no-sync"}
	if link {
		args = append(args, "--link")
	}
	cmd := c.command("pg_upgrade", args...)
	cmd.Dir = c.root // pg_upgrade writes its logs where it runs
	out, err = cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pg_upgrade: %w: %s", err, out)
	}
	// The settings pgtest gave the first cluster (port, wal_level, …).
	if i := strings.Index(string(oldConf), "\n# pgtest\n"); i >= 0 {
		f, err := os.OpenFile(filepath.Join(newData, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return string(out), err
		}
		_, err = f.WriteString(string(oldConf[i:]))
		f.Close()
		if err != nil {
			return string(out), err
		}
	}
	c.DataDir = newData
	return string(out), c.start()
}
