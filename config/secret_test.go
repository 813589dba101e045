package config

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// A static endpoint's secret is checked by the rule the signer uses
// (dispatch.DecodeSecret): `walhook check` must refuse, with file:line:col,
// every secret `walhook run` would refuse at start-up, and accept the rest.
func TestStaticSecretSameRuleAsSigner(t *testing.T) {
	t.Parallel()
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)) }
	for _, tc := range []struct {
		name, secret, want string // want "" = accepted
	}{
		// 32 bytes: base64 ends in "=", which unpadded base64 drops.
		{"unpadded", "whsec_" + strings.TrimRight(b64(32), "="), `:10:13: endpoints[0].secret: invalid webhook secret: the part after "whsec_" is base64 without its "=" padding; add it (receivers' libraries refuse it unpadded)`},
		{"url-safe", "whsec_" + strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xff}, 16))),
			`:10:13: endpoints[0].secret: invalid webhook secret: the part after "whsec_" is URL-safe base64 (- and _); use standard base64 (+ and /)`},
		{"garbage", "whsec_not!base64", `:10:13: endpoints[0].secret: invalid webhook secret: the part after "whsec_" is not standard base64`},
		{"too long", "whsec_" + b64(65), `:10:13: endpoints[0].secret: invalid webhook secret: key is 65 bytes, want 24 to 64`},
		{"too short", "whsec_" + b64(23), `:10:13: endpoints[0].secret: invalid webhook secret: key is 23 bytes, want 24 to 64`},
		{"shortest", "whsec_" + b64(24), ""},
		{"padded 32", "whsec_" + b64(32), ""},
		{"longest", "whsec_" + b64(64), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadWritten(t, `source:
  dsn: postgres://walhook@localhost/app
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
endpoints:
  - id: ops
    url: https://hooks.example.com/a
    secret: `+tc.secret+`
    events: [problem.*]
`, tc.want)
			if err == nil {
				return
			}
			if strings.Contains(err.Error(), strings.TrimPrefix(tc.secret, "whsec_")) {
				t.Fatalf("error repeats the secret: %v", err)
			}
		})
	}
}
