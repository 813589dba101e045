package config

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// BoundConnects appends " connect_timeout=10 application_name=walhook"
// to a keyword/value DSN whose last value is empty (password=, relying
// on .pgpass or trust): pgx reads "password= connect_timeout=10" as the
// password "connect_timeout=10", so the DSN's meaning changes (a wrong
// password is sent) and no connect timeout is set.
func TestReviewBoundConnectsEmptyLastValue(t *testing.T) {
	c := &Config{Source: Source{DSN: "host=db user=u password="}, Store: Store{DSN: "host=db user=u password="}}
	c.BoundConnects()
	pc, err := pgconn.ParseConfig(c.Source.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if pc.Password != "" || pc.ConnectTimeout != 10*time.Second {
		t.Fatalf("DSN became %q: password %q (want empty), connect timeout %s (want 10s)", c.Source.DSN, pc.Password, pc.ConnectTimeout)
	}
}
