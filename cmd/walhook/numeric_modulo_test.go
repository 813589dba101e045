package main

import (
	"testing"
	"time"
)

// `new.qty % 2 == 0` on a numeric column: 4.0 is the same number as 4,
// valid data of the column, and maps like it. It stopped the run
// ("invalid operation: float64 % int") at that row on every restart, so
// the third was never delivered.
func TestRunWhenModuloOnNumericWithFractionZeros(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE bids (id int PRIMARY KEY, qty numeric);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: bid.even
    table: public.bids
    operations: [insert]
    when: new.qty % 2 == 0
    data: [id, qty]
`), s)
	db.setup(t, cfg)
	p := startRunProc(t, "--config", file)
	db.exec(t, `INSERT INTO bids VALUES (1, 4)`)
	db.exec(t, `INSERT INTO bids VALUES (2, 4.0)`)
	db.exec(t, `INSERT INTO bids VALUES (3, 6)`)
	runWaitFor(t, 30*time.Second, "the three even bids delivered", func() bool {
		if _, stopped := p.exited(); stopped {
			return true
		}
		return rc.Unique() == 3
	}, p.diag)
	if err, stopped := p.exited(); stopped {
		t.Fatalf("walhook run stopped on a valid numeric value: %v", err)
	}
}
