package mapper

import (
	"testing"

	"github.com/walhook/walhook/cdc"
)

// docs/mapping.md: "The expression is compiled and type-checked when the
// config is loaded, and must be boolean", % included: the check runs on
// the expression as written, the __mod rewrite only on the program that
// runs. With the rewrite in the check too, a non-boolean when:, a % of a
// string or a % compared with a string loaded, then never matched or
// stopped the run.
func TestModuloKeepsLoadTimeTypeCheck(t *testing.T) {
	for _, when := range []string{
		`new.qty % 2`,        // not boolean: loaded, never matches
		`new.qty % 2 == "1"`, // int vs string: loaded, never matches
		`new.qty % "2" == 0`, // % of a string: loaded, stops the run
		`1 % 2 == "x"`,
	} {
		_, err := Compile([]Rule{{Event: "e", Table: "t", Ops: []cdc.Op{cdc.OpInsert}, When: when,
			Data: []DataField{{Key: "id", Column: "id"}}, Where: "w"}}, Options{})
		if err == nil {
			t.Errorf("%s: loads; expr refused it at load before the %% rewrite", when)
		}
	}
}
