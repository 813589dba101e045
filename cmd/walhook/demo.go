package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/pgcluster"
	"github.com/walhook/walhook/internal/receiver"
)

// sampleDir is where the Auction Excellence sample lives in a checkout.
const sampleDir = "testdata/auction-excellence"

// runDemo is `walhook demo`: the one-command first run. It starts a
// throwaway PostgreSQL from the local server binaries, loads the Auction
// Excellence sample schema, runs setup, starts walhook with the sample
// mapping and a local receiver that verifies every signature, generates a
// few events of every type, prints each verified delivery, and removes
// everything on Ctrl-C (or after --duration).
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	duration := fs.Duration("duration", 0, "stop by itself after this long (default: run until Ctrl-C)")
	samples := fs.String("samples", "", "directory holding the sample schema.sql and walhook.yaml (default: "+sampleDir+" of the checkout)")
	listen := fs.String("listen", "127.0.0.1:8080", "admin API address (a free port is taken when this one is busy)")
	every := fs.Duration("every", 5*time.Second, "pause between rounds of generated activity")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *duration < 0 {
		return usageErrorf("demo: --duration must not be negative, got %v (0, the default, runs until Ctrl-C)", *duration)
	}
	if *every <= 0 {
		return usageErrorf("demo: --every must be positive, got %v", *every)
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		// Found before the throwaway cluster starts, not after.
		return usageErrorf("demo: --listen must be host:port (e.g. 127.0.0.1:8080), got %q", *listen)
	}
	dir, err := findSamples(*samples)
	if err != nil {
		return &UsageError{Err: err}
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	d := &demo{stdout: stdout, stderr: stderr, dir: dir, listen: *listen, every: *every}
	err = d.run(ctx)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		err = nil
	}
	return err
}

// findSamples returns the sample directory: the flag, or testdata/… in the
// current directory or one of its parents (go run from anywhere in the
// checkout).
func findSamples(flagDir string) (string, error) {
	if flagDir != "" {
		if !hasSamples(flagDir) {
			return "", fmt.Errorf("demo: --samples %s must hold schema.sql and walhook.yaml", flagDir)
		}
		return flagDir, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	return samplesAbove(wd)
}

// hasSamples reports whether d holds the sample's schema.sql and walhook.yaml.
func hasSamples(d string) bool {
	for _, f := range []string{"schema.sql", "walhook.yaml"} {
		if _, err := os.Stat(filepath.Join(d, f)); err != nil {
			return false
		}
	}
	return true
}

// samplesAbove looks for the sample in wd and each of its parents.
func samplesAbove(wd string) (string, error) {
	for d := wd; ; d = filepath.Dir(d) {
		if c := filepath.Join(d, sampleDir); hasSamples(c) {
			return c, nil
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	return "", fmt.Errorf("demo: the sample (%s/schema.sql and walhook.yaml) was not found above %s; run the demo from a walhook checkout or pass --samples DIR", sampleDir, wd)
}

type demo struct {
	stdout, stderr io.Writer
	dir, listen    string
	every          time.Duration

	outMu sync.Mutex
}

func (d *demo) say(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.stdout, format+"\n", args...)
}

func (d *demo) run(ctx context.Context) error {
	schema, err := os.ReadFile(filepath.Join(d.dir, "schema.sql"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.say("walhook demo: starting a throwaway PostgreSQL from the local server binaries …")
	// Private: the cluster trusts whoever connects, as the superuser, so
	// it is served on a Unix socket only this OS user can reach, not on
	// 127.0.0.1 for every user of the machine.
	cluster, err := pgcluster.Start(pgcluster.Options{Private: true})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		cluster.Remove()
		d.say("walhook demo: stopped; the throwaway PostgreSQL and everything the demo created are removed")
	}()
	if err := cluster.Exec(ctx, "postgres", "CREATE DATABASE auctions"); err != nil {
		return fmt.Errorf("demo: create database: %w", err)
	}
	if err := cluster.Exec(ctx, "auctions", string(schema)); err != nil {
		return fmt.Errorf("demo: load %s/schema.sql: %w", d.dir, err)
	}
	dsn := cluster.DSN("auctions")
	d.say("  PostgreSQL %s on a Unix socket (port %d), database auctions (sample schema loaded)", filepath.Base(filepath.Dir(cluster.BinDir)), cluster.Port)
	d.say("    connect: psql -h %s -p %d -U postgres auctions", cluster.SocketDir, cluster.Port)

	secret, apiKey := dispatch.NewSecret(), "sk_demo_"+randomHex(16)
	rcv, err := receiver.New(false, secret)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	rcv.OnDelivery = func(dl receiver.Delivery) { d.say("%s", receiver.Line(dl)) }
	rln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: receiver: %w", err)
	}
	rsrv := &http.Server{Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
	go rsrv.Serve(rln)
	defer rsrv.Close()
	receiverURL := "http://" + rln.Addr().String() + "/webhooks"

	apiAddr, err := freeAddr(d.listen)
	if err != nil {
		return fmt.Errorf("demo: admin API: %w", err)
	}
	cfgFile := filepath.Join(filepath.Dir(cluster.DataDir), "walhook-demo.yaml")
	if err := d.writeConfig(cfgFile, dsn, apiAddr, apiKey, receiverURL, secret); err != nil {
		return err
	}
	var setupOut bytes.Buffer
	if err := Run(ctx, []string{"setup", "--config", cfgFile}, &setupOut, d.stderr); err != nil {
		return fmt.Errorf("demo: setup: %w\n%s", err, setupOut.String())
	}
	d.say("  setup: publication, slot and store schema created")

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runErr := make(chan error, 1)
	go func() { runErr <- Run(runCtx, []string{"run", "--config", cfgFile}, io.Discard, d.stderr) }()
	defer func() {
		stopRun()
		<-runErr
	}()
	if err := waitHTTP(ctx, "http://"+apiAddr+"/readyz", runErr); err != nil {
		return fmt.Errorf("demo: walhook did not become ready: %w", err)
	}
	d.say("  receiver  %s  (verifies every signature, de-duplicates by webhook-id)", receiverURL)
	d.say("  admin API http://%s   X-API-Key: %s", apiAddr, apiKey)
	d.say("    try: curl -s -H 'X-API-Key: %s' http://%s/api/v1/status", apiKey, apiAddr)
	d.say("  generating activity for every Auction Excellence event type; Ctrl-C stops and removes everything\n")

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for round := 1; ; round++ {
		if err := demoActivity(ctx, conn, round); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("demo: generate activity: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-runErr:
			runErr <- err
			return fmt.Errorf("demo: walhook run stopped: %w", err)
		case <-time.After(d.every):
		}
	}
}

// writeConfig writes the sample walhook.yaml with the demo's values set:
// the throwaway database, the admin API address and key, the receiver as a
// static endpoint (loopback allowed), quiet logs so deliveries stand out,
// and cpu.yield off: the demo shows each change as it is delivered, and on
// a busy laptop yielding would hold them back for up to cpu.max_lag.
func (d *demo) writeConfig(file, dsn, apiAddr, apiKey, receiverURL, secret string) error {
	src, err := os.ReadFile(filepath.Join(d.dir, "walhook.yaml"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil || len(doc.Content) != 1 {
		return fmt.Errorf("demo: read %s/walhook.yaml: %v", d.dir, err)
	}
	root := doc.Content[0]
	set := func(value any, path ...string) error {
		var n yaml.Node
		if err := n.Encode(value); err != nil {
			return err
		}
		return yamlSet(root, path, &n)
	}
	steps := []struct {
		value any
		path  []string
	}{
		{dsn, []string{"source", "dsn"}},
		{"1s", []string{"source", "heartbeat_interval"}},
		{apiAddr, []string{"api", "listen"}},
		{[]string{apiKey}, []string{"api", "keys"}},
		{[]string{"127.0.0.1"}, []string{"delivery", "allow"}},
		{"warn", []string{"log", "level"}},
		{false, []string{"cpu", "yield"}},
		{[]map[string]any{{
			"id": "demo-receiver", "url": receiverURL, "secret": secret,
			"description": "the demo's verifying receiver",
		}}, []string{"endpoints"}},
	}
	for _, s := range steps {
		if err := set(s.value, s.path...); err != nil {
			return fmt.Errorf("demo: config: %w", err)
		}
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return fmt.Errorf("demo: config: %w", err)
	}
	return os.WriteFile(file, out, 0o600)
}

// yamlSet sets path in the mapping node m, creating mappings on the way.
func yamlSet(m *yaml.Node, path []string, value *yaml.Node) error {
	if m.Kind != yaml.MappingNode {
		return fmt.Errorf("%s: not a mapping", path[0])
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != path[0] {
			continue
		}
		if len(path) == 1 {
			m.Content[i+1] = value
			return nil
		}
		if m.Content[i+1].Kind != yaml.MappingNode {
			m.Content[i+1] = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		}
		return yamlSet(m.Content[i+1], path[1:], value)
	}
	key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: path[0]}
	if len(path) == 1 {
		m.Content = append(m.Content, key, value)
		return nil
	}
	child := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	m.Content = append(m.Content, key, child)
	return yamlSet(child, path[1:], value)
}

// freeAddr returns want when it can be listened on, else a free loopback
// port on the same host.
func freeAddr(want string) (string, error) {
	if ln, err := net.Listen("tcp", want); err == nil {
		addr := ln.Addr().String()
		ln.Close()
		return addr, nil
	}
	host, _, err := net.SplitHostPort(want)
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitHTTP polls url until it answers 200, ctx ends or run stops.
func waitHTTP(ctx context.Context, url string, runErr chan error) error {
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-runErr:
			runErr <- err
			if err == nil {
				err = errors.New("walhook run exited")
			}
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// demoActivity makes one round of changes in the sample database, each
// statement its own transaction, that together produce every one of the 17
// Auction Excellence event types.
func demoActivity(ctx context.Context, conn *pgx.Conn, round int) error {
	a, owner, counter, inspector := newUUID(), newUUID(), newUUID(), newUUID()
	sub, insp, defect, prob, action, ch, msg := newUUID(), newUUID(), newUUID(), newUUID(), newUUID(), newUUID(), newUUID()
	email := func(name string) string { return fmt.Sprintf("%s+%d-%s@example.com", name, round, a[:8]) }
	steps := []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO auctions (id, name) VALUES ($1, $2)`, []any{a, fmt.Sprintf("Demo auction %d", round)}},
		{`INSERT INTO members (id, auction_id, email, display_name, role) VALUES ($1, $2, $3, 'Alice', 'owner')`, []any{owner, a, email("alice")}}, // member.invited
		{`INSERT INTO members (id, auction_id, email, display_name, role, invited_by) VALUES ($1, $2, $3, 'Bob', 'counter', $4), ($5, $2, $6, 'Carol', 'inspector', $4)`, []any{counter, a, email("bob"), owner, inspector, email("carol")}},
		{`UPDATE members SET accepted_at = now(), user_id = gen_random_uuid() WHERE auction_id = $1`, []any{a}}, // member.joined ×3
		{`UPDATE members SET role = 'admin' WHERE id = $1`, []any{counter}},                                     // member.role_changed
		{`INSERT INTO lot_submissions (id, auction_id, member_id, lot_number, item_count, notes) VALUES ($1, $2, $3, $4, 10, 'first count')`, []any{sub, a, counter, round}},
		{`UPDATE lot_submissions SET item_count = 12, notes = 'recounted', updated_at = now() WHERE id = $1`, []any{sub}}, // submission.updated
		{`INSERT INTO inspections (id, auction_id, submission_id, inspector_id, grade, notes) VALUES ($1, $2, $3, $4, 'B', 'minor wear')`, []any{insp, a, sub, inspector}},
		{`INSERT INTO inspection_defects (id, auction_id, inspection_id, kind, severity, description, details) VALUES ($1, $2, $3, 'scratch', 'minor', 'scratch on the lid', '{"photos": 2}')`, []any{defect, a, insp}},
		{`INSERT INTO problem_reports (id, auction_id, reported_by, title, description, priority) VALUES ($1, $2, $3, 'Lot count mismatch', 'two items missing', 'high')`, []any{prob, a, counter}},
		{`UPDATE problem_reports SET status = 'in_progress', assignee_id = $2, updated_at = now() WHERE id = $1`, []any{prob, owner}}, // status_changed + assigned
		{`INSERT INTO problem_actions (id, auction_id, problem_id, description, assignee_id) VALUES ($1, $2, $3, 'Recount the lot', $4)`, []any{action, a, prob, owner}},
		{`UPDATE problem_actions SET completed_at = now(), completed_by = $2 WHERE id = $1`, []any{action, owner}}, // action_completed
		{`UPDATE problem_reports SET status = 'closed', updated_at = now() WHERE id = $1`, []any{prob}},
		{`INSERT INTO channels (id, auction_id, name, topic, created_by) VALUES ($1, $2, $3, 'counting', $4)`, []any{ch, a, fmt.Sprintf("lot-%d", round), owner}},
		{`INSERT INTO messages (id, auction_id, channel_id, author_id, body) VALUES ($1, $2, $3, $4, 'Lot recounted: 12 items.')`, []any{msg, a, ch, owner}},
		{`UPDATE messages SET body = 'Lot recounted: 12 items, all present.', edited_at = now() WHERE id = $1`, []any{msg}},
		{`UPDATE messages SET deleted_at = now() WHERE id = $1`, []any{msg}},
		{`UPDATE channels SET archived = true, archived_at = now() WHERE id = $1`, []any{ch}},
		{`UPDATE members SET removed_at = now(), removed_by = $2 WHERE id = $1`, []any{inspector, owner}}, // member.removed
	}
	for _, s := range steps {
		if _, err := conn.Exec(ctx, s.sql, s.args...); err != nil {
			return err
		}
	}
	return nil
}
