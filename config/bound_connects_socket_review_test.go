package config

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A URL whose host is a percent-encoded unix-socket directory (libpq's
// postgresql://%2Fvar%2Frun%2Fpostgresql/db form, which pgx accepts)
// fails net/url's host check, so withParam leaves it without
// connect_timeout and application_name.
func TestReviewBoundConnectsSocketURL(t *testing.T) {
	in := "postgres://u@%2Fvar%2Frun%2Fpostgresql/app"
	if _, err := pgconn.ParseConfig(in); err != nil {
		t.Fatalf("pgx refuses %q: %v", in, err)
	}
	c := &Config{Source: Source{DSN: in}}
	c.BoundConnects()
	pc, err := pgconn.ParseConfig(c.Source.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if pc.ConnectTimeout != 10*time.Second || pc.RuntimeParams["application_name"] != DefaultApplicationName {
		t.Errorf("%q became %q: connect timeout %s (want 10s), application_name %q (want walhook)",
			in, c.Source.DSN, pc.ConnectTimeout, pc.RuntimeParams["application_name"])
	}
}
