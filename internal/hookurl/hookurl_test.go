package hookurl

import (
	"net/url"
	"strings"
	"testing"
)

// Neither the URL nor a password's tail reaches the text.
func TestParseProblemHidesTheURL(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"https://user:pa/ss-s3cret@hooks.example.com/in", "invalid port after the host (or user info in it, which is refused)"},
		{"https://hooks.example.com/in%zz?token=s3cret", `invalid URL escape "%zz"`},
		{"https://hooks.example.com:80x/in?token=s3cret", "invalid port after the host (or user info in it, which is refused)"},
	} {
		_, err := url.Parse(tc.raw)
		if err == nil {
			t.Fatalf("%s parsed", tc.raw)
		}
		got := ParseProblem(err)
		if got != tc.want || strings.Contains(got, "s3cret") {
			t.Errorf("%s: %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestPortOK(t *testing.T) {
	for p, want := range map[string]bool{"": true, "1": true, "443": true, "65535": true, "0": false, "65536": false, "99999999999999999999": false} {
		if PortOK(p) != want {
			t.Errorf("PortOK(%q) = %v, want %v", p, !want, want)
		}
	}
}
