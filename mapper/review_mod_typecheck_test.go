package mapper

import (
	"testing"

	"github.com/walhook/walhook/cdc"
)

// docs/mapping.md: "The expression is compiled and type-checked when the
// config is loaded, and must be boolean." modToFunc turns every a % b into
// a call of the untyped __mod, whose result is `any`, so the checker no
// longer sees an int: a non-boolean when:, a % of a string, or a %
// result compared with a string now load, and then never match (out is not
// a bool: evalWhen reads false) or stop the run at the first row. Before
// the patch each was refused at load.
func TestReviewModuloKeepsLoadTimeTypeCheck(t *testing.T) {
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
