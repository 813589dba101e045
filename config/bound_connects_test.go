package config

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// What pgx makes of DSNs after BoundConnects: the defaults apply, and
// nothing the DSN says changes meaning. Each case broke once: an empty
// last value ("password=") swallowed the appended parameter (a wrong
// password, no timeout); a value containing a parameter's name counted as
// setting it; a percent-encoded unix-socket host, which net/url refuses,
// got neither default.
func TestBoundConnectsAsPgxReadsThem(t *testing.T) {
	for _, tc := range []struct {
		in       string
		password string
		timeout  time.Duration
		app      string
	}{
		{"host=db user=u password=", "", 10 * time.Second, "walhook"},
		{"host=db user=u password=my_connect_timeout_pw", "my_connect_timeout_pw", 10 * time.Second, "walhook"},
		{"host=db user=application_name_owner dbname=app", "", 10 * time.Second, "walhook"},
		{"host=db connect_timeout=3 application_name=sync", "", 3 * time.Second, "sync"},
		{"postgres://u@%2Fvar%2Frun%2Fpostgresql/app", "", 10 * time.Second, "walhook"},
		{"postgres://u:p%3Fw@db/app?application_name=sync", "p?w", 10 * time.Second, "sync"},
	} {
		c := &Config{Source: Source{DSN: tc.in}, Store: Store{DSN: tc.in}}
		c.BoundConnects()
		pc, err := pgconn.ParseConfig(c.Source.DSN)
		if err != nil {
			t.Fatalf("%q became %q, which pgx refuses: %v", tc.in, c.Source.DSN, err)
		}
		if pc.Password != tc.password || pc.ConnectTimeout != tc.timeout || pc.RuntimeParams["application_name"] != tc.app {
			t.Errorf("%q became %q: password %q, connect timeout %s, application_name %q; want %q, %s, %q",
				tc.in, c.Source.DSN, pc.Password, pc.ConnectTimeout, pc.RuntimeParams["application_name"], tc.password, tc.timeout, tc.app)
		}
	}
}

// A URL whose query ends in "&" (pgx accepts it) gets the defaults
// without a second "&": "&&connect_timeout=…" is refused by pgx ("missing
// key/value separator").
func TestBoundConnectsURLQueryEndingInAmpersand(t *testing.T) {
	in := "postgres://u@db/app?sslmode=disable&"
	if _, err := pgconn.ParseConfig(in); err != nil {
		t.Fatalf("pgx refuses the input: %v", err)
	}
	c := &Config{Source: Source{DSN: in}}
	c.BoundConnects()
	if _, err := pgconn.ParseConfig(c.Source.DSN); err != nil {
		t.Errorf("%q became %q, which pgx refuses: %v", in, c.Source.DSN, err)
	}
}

// keywordDSNHas reads quoting as libpq does: a quoted value that contains
// " service=" (a password, options) does not name a service, and the DSN
// gets the defaults (it got neither).
func TestBoundConnectsQuotedServiceInAValue(t *testing.T) {
	c := &Config{Source: Source{DSN: "host=db user=u password='x service=y'"}}
	c.BoundConnects()
	pc, err := pgconn.ParseConfig(c.Source.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if pc.ConnectTimeout != 10*time.Second || pc.RuntimeParams["application_name"] != "walhook" {
		t.Errorf("%q: connect timeout %s, application_name %q; want 10s, walhook (the DSN names no service)",
			c.Source.DSN, pc.ConnectTimeout, pc.RuntimeParams["application_name"])
	}
}

// With PGSERVICE set, the service file decides, as with a DSN that names
// a service: no defaults are added over it.
func TestBoundConnectsLeavesAServiceFromTheEnvironment(t *testing.T) {
	t.Setenv("PGSERVICE", "prod")
	c := &Config{Source: Source{DSN: "host=db"}, Store: Store{DSN: "postgres://u@db/app"}}
	c.BoundConnects()
	if c.Source.DSN != "host=db" || c.Store.DSN != "postgres://u@db/app" {
		t.Errorf("with PGSERVICE: %q, %q; want them as written", c.Source.DSN, c.Store.DSN)
	}
}
