package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A bad config: every error is printed with its line, and the exit is 2,
// before any database is touched.
func TestCheckBadConfig(t *testing.T) {
	t.Parallel()
	cfg := writeTempConfig(t, "bad.yaml", `source:
  dsn: ${WALHOOK_CHECK_TEST_NEVER_SET}
  colour: blue
delivery:
  timeout: 30 seconds
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", cfg)
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		cfg + `:2:8: source.dsn: environment variable WALHOOK_CHECK_TEST_NEVER_SET is not set`,
		cfg + `:3:3: source.colour: unknown key`,
		cfg + `:5:12: delivery.timeout: invalid duration "30 seconds"`,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if out != "" {
		t.Errorf("bad config produced check output:\n%s", out)
	}
}

// Rules that do not compile are bad config too; a when: that does not
// names the line of its value.
func TestCheckBadRule(t *testing.T) {
	t.Parallel()
	cfg := writeTempConfig(t, "rule.yaml", `source:
  dsn: postgres://walhook@127.0.0.1:1/app
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
    when: new.status ==
`)
	_, errOut, code := runCLI(t, context.Background(), "check", "--config", cfg)
	if code != 2 || !strings.Contains(errOut, cfg+":7:11: events[0].when: ") {
		t.Fatalf("exit %d, stderr %q; want 2 and the when: value's position", code, errOut)
	}
}

// A DSN pgx cannot parse is bad config, and its password is not echoed.
func TestCheckBadDSNHidesPassword(t *testing.T) {
	t.Parallel()
	cfg := writeTempConfig(t, "dsn.yaml", `source:
  dsn: postgres://walhook:pw-s3cret-x@127.0.0.1:notaport/app
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
	out, errOut, code := runCLI(t, context.Background(), "check", "--config", cfg)
	if code != 2 || !strings.Contains(errOut, "source.dsn: cannot parse the connection string") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if strings.Contains(out+errOut, "pw-s3cret-x") {
		t.Fatal("the password was printed")
	}
}

// A DSN pgx cannot parse is refused at its line with what is wrong in it
// (the port, the sslmode, a quote), never with the password; and every
// command that connects says so before connecting.
func TestBadDSNSaysWhatAndWhere(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ dsn, want string }{
		{`"postgres://walhook:pw-s3cret-x@127.0.0.1:99999/app"`, "invalid port"},
		{`"postgres://walhook:pw-s3cret-x@127.0.0.1/app?sslmode=bogus"`, "sslmode is invalid"},
		{`"postgres://walhook:pw-s3cret-x%ZZ@127.0.0.1/app"`, "invalid percent-encoded token in password"},
		{`"host=127.0.0.1 password='pw-s3cret-x dbname=app"`, "unterminated quoted string"},
		{`"mysql://walhook:pw-s3cret-x@127.0.0.1/app"`, "a URL must start with postgres:// or postgresql://"},
	} {
		for _, cmd := range []string{"check", "setup", "run"} {
			cfg := writeTempConfig(t, "dsn.yaml", "api: {listen: off}\nsource:\n  dsn: "+tc.dsn+`
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
			out, errOut, code := runCLI(t, context.Background(), cmd, "--config", cfg)
			if code != 2 || !strings.Contains(errOut, cfg+":3:8: source.dsn: cannot parse the connection string: ") ||
				!strings.Contains(errOut, tc.want) {
				t.Errorf("%s with %s: exit %d, stderr %q; want 2, the position and %q", cmd, tc.dsn, code, errOut, tc.want)
			}
			if strings.Contains(out+errOut, "pw-s3cret-x") {
				t.Errorf("%s with %s: the password was printed: %s", cmd, tc.dsn, errOut)
			}
		}
		// The same in store.dsn, the source's being fine: every command
		// that connects to the store says so before connecting anywhere.
		for _, cmd := range [][]string{{"check"}, {"setup"}, {"run"}, {"teardown", "--store"}} {
			cfg := writeTempConfig(t, "store-dsn.yaml", "api: {listen: off}\nsource:\n  dsn: postgres://walhook@127.0.0.1:1/app\nstore:\n  dsn: "+tc.dsn+`
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
			out, errOut, code := runCLI(t, context.Background(), append(cmd, "--config", cfg)...)
			if code != 2 || !strings.Contains(errOut, cfg+":5:8: store.dsn: cannot parse the connection string: ") ||
				!strings.Contains(errOut, tc.want) {
				t.Errorf("%s with store.dsn %s: exit %d, stderr %q; want 2, the position and %q", cmd, tc.dsn, code, errOut, tc.want)
			}
			if strings.Contains(out+errOut, "pw-s3cret-x") {
				t.Errorf("%s with store.dsn %s: the password was printed: %s", cmd, tc.dsn, errOut)
			}
		}
	}
}

// A static endpoint the delivery policy refuses (http://, a private
// address not in delivery.allow) is bad config: run and setup refuse it
// at its line before they connect anywhere, so setup creates no slot for
// a config run will not start with. (127.0.0.1:1 answers nothing: a
// command that connected first would fail with exit 1.)
func TestRefusedEndpointURLStopsRunAndSetupFirst(t *testing.T) {
	t.Parallel()
	refusedBeforeConnecting(t, `source:
  dsn: postgres://walhook@127.0.0.1:1/app?connect_timeout=1
api: {listen: off}
events:
  - {event: problem.created, table: problem_reports, operations: [insert]}
endpoints:
  - id: ops
    url: https://hooks.example.com/in
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  - id: plain
    url: http://hooks.example.com/in
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
`, ":10:5: endpoints[1].url: static endpoint \"plain\": insecure url: http:// is not allowed")
}

// An admin API without keys is refused by setup as by run, before setup
// connects: a setup that went ahead left a slot keeping WAL for a config
// run would not start with. (127.0.0.1:1 answers nothing.)
func TestAPIWithoutKeysStopsRunAndSetupFirst(t *testing.T) {
	t.Parallel()
	refusedBeforeConnecting(t, `source:
  dsn: postgres://walhook@127.0.0.1:1/app?connect_timeout=1
events:
  - {event: problem.created, table: problem_reports, operations: [insert]}
`, ": api.keys: empty while api.listen is 127.0.0.1:8080")
}

// Every refusal is said at once, not the first one per try: a config
// with an admin API without keys and two refused endpoints names all
// three, as check lists them.
func TestRunAndSetupSayEveryRefusal(t *testing.T) {
	t.Parallel()
	refusedBeforeConnecting(t, `source:
  dsn: postgres://walhook@127.0.0.1:1/app?connect_timeout=1
events:
  - {event: problem.created, table: problem_reports, operations: [insert]}
endpoints:
  - id: plain
    url: http://hooks.example.com/in
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  - id: inside
    url: https://10.1.2.3/in
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
`, ": api.keys: empty while api.listen is 127.0.0.1:8080",
		`:6:5: endpoints[0].url: static endpoint "plain": insecure url: http:// is not allowed`,
		`:9:5: endpoints[1].url: static endpoint "inside": `)
}

// refusedBeforeConnecting writes config and wants run and setup to exit 2
// with each of wants after the file's name. The DSN should name
// 127.0.0.1:1, which answers nothing: a command that connected first would
// exit 1.
func refusedBeforeConnecting(t *testing.T, config string, wants ...string) {
	t.Helper()
	cfg := writeTempConfig(t, "walhook.yaml", config)
	for _, cmd := range []string{"run", "setup"} {
		_, errOut, code := runCLI(t, context.Background(), cmd, "--config", cfg)
		if code != 2 {
			t.Errorf("%s: exit %d, stderr %q; want 2", cmd, code, errOut)
		}
		for _, want := range wants {
			if !strings.Contains(errOut, cfg+want) {
				t.Errorf("%s: stderr %q; want %q", cmd, errOut, cfg+want)
			}
		}
	}
}

// A config named by $WALHOOK_CONFIG that cannot be read says where its
// name came from: the user typed no path (a stale export, a container's
// environment).
func TestConfigFromEnvironmentSaysSo(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone.yaml")
	t.Setenv("WALHOOK_CONFIG", missing)
	_, errOut, code := runCLI(t, context.Background(), "check")
	if code != 2 || !strings.Contains(errOut, "read config: open "+missing+": no such file or directory (named by $WALHOOK_CONFIG)") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// An error in a rule's when: names the line of the when: value, not the
// line the rule starts on (with the position inside the expression).
func TestWhenErrorNamesItsLine(t *testing.T) {
	t.Parallel()
	cfg := writeTempConfig(t, "when.yaml", `source:
  dsn: postgres://walhook@127.0.0.1:1/app?connect_timeout=1
api: {listen: off}
events:
  - event: problem.closed
    description: A problem report was closed.
    table: problem_reports
    operations: [update]
    when: new.status == 'closed' &&
`)
	_, errOut, code := runCLI(t, context.Background(), "check", "--config", cfg)
	if code != 2 || !strings.Contains(errOut, cfg+":9:11: events[0].when") {
		t.Errorf("exit %d, stderr %q; want 2 and the when: line (9:11)", code, errOut)
	}
}

// writeTempConfig writes body as a config file named name in a directory
// of the test's own and returns its path.
func writeTempConfig(t *testing.T, name, body string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}
