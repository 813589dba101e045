package config

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// withParam decides that a keyword/value DSN "sets" connect_timeout when
// the text contains the word anywhere: a password (or dbname, user…)
// containing it leaves the connection with no connect timeout at all.
func TestReviewBoundConnectsKeywordInValue(t *testing.T) {
	for _, in := range []string{
		"host=db user=u password=my_connect_timeout_pw",
		"host=db user=application_name_owner dbname=app",
	} {
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
}
