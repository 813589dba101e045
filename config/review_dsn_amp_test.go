package config

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A URL whose query ends in "&" (pgx accepts it) gets "&&connect_timeout=…",
// which pgx refuses: "missing key/value separator". (Already so before
// eed7c8d; the rewrite of the URL branch kept it.)
func TestReviewURLQueryEndingInAmpersand(t *testing.T) {
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
