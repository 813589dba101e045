package main

import (
	"testing"
)

// `new.qty % 2 == 0` on a numeric column: 4.0 is the same number as 4,
// valid data of the column, and maps like it. It stopped the run
// ("invalid operation: float64 % int") at that row on every restart, so
// the third was never delivered.
func TestRunWhenModuloOnNumericWithFractionZeros(t *testing.T) {
	t.Parallel()
	db, rc, p := oneTableRun(t, `CREATE TABLE bids (id int PRIMARY KEY, qty numeric);`, whenRule("public.bids", "new.qty % 2 == 0"))
	db.exec(t, `INSERT INTO bids VALUES (1, 4)`)
	db.exec(t, `INSERT INTO bids VALUES (2, 4.0)`)
	db.exec(t, `INSERT INTO bids VALUES (3, 6)`)
	waitDelivered(t, p, rc, 3, "the three even bids delivered")
}
