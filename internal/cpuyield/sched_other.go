//go:build !linux

package cpuyield

import "os"

const (
	policyNormal = 0
	policyIdle   = 5
)

var readFile = os.ReadFile

type policy struct {
	policy uint32
	nice   int32
}

func (p policy) String() string { return "unknown" }

func currentPolicy() (policy, error) { return policy{}, errUnsupported }
func setAll(bool) error              { return errUnsupported }
func probeRestore() error            { return errUnsupported }
func restoreAll() error              { return errUnsupported }
