package dispatch

import (
	"net/netip"
	"testing"
)

// Every kind of address the dial check must refuse, in each of its forms,
// and the public ones it must let through.
func TestBlockedReason(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ip, want string // want "" = allowed
	}{
		{"93.184.216.34", ""},
		{"2606:2800:220:1:248:1893:25c8:1946", ""},
		{"10.1.2.3", "private"},
		{"::ffff:10.1.2.3", "private"}, // v4-mapped
		{"127.0.0.1", "loopback"},
		{"::1", "loopback"},
		{"0.0.0.0", `unspecified ("this network")`},
		{"::", "unspecified"},
		{"100.64.0.1", "carrier-grade NAT"},
		{"169.254.169.254", "the cloud metadata service"},
		{"fd00:ec2::254", "private (unique local)"},
		{"fe80::1%eth0", "link-local"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"255.255.255.255", "reserved"},
		{"198.18.0.1", "benchmarking"},
		{"2001:2::1", "benchmarking"},
		{"2001:db8::1", "documentation"},
		{"2002:a01:203::1", "6to4"},
		// NAT64: the IPv4 address inside is what gets dialled.
		{"64:ff9b::5db8:d822", ""}, // 93.184.216.34
		{"64:ff9b::a01:203", "private (through NAT64)"},
		{"64:ff9b::a9fe:a9fe", "the cloud metadata service (through NAT64)"},
		{"64:ff9b:1::a01:203", "local-use NAT64"},
	} {
		got := blockedReason(netip.MustParseAddr(tc.ip))
		if got != tc.want {
			t.Errorf("blockedReason(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
}
