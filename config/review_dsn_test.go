package config

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// keywordDSNHas does not know quoting: a quoted value that contains
// " service=" (a password, options) counts as the DSN naming a service,
// and withParam then leaves the DSN without connect_timeout and
// application_name. pgx reads no service there.
func TestReviewQuotedServiceInAValueKeepsDefaults(t *testing.T) {
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
