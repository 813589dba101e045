package config

import (
	"strings"
	"testing"
)

// A secret written (or expanded from ${…}) into a boolean, number or
// duration field is not echoed by the error that refuses it: such a value
// may be an endpoint secret, an API key or a DSN with its password put on
// the wrong line, as a string field's error already keeps it out.
func TestScalarErrorsDoNotEchoSecrets(t *testing.T) {
	t.Parallel()
	for _, secret := range []string{
		"whsec_TOPSECRETxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=",
		"postgres://walhook:TOPSECRET@db/app",
		"password=TOPSECRET",
	} {
		for _, field := range []string{"allow_http", "workers", "jitter", "timeout"} {
			_, err := loadWritten(t, `source:
  dsn: postgres://walhook@localhost/app
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
delivery:
  `+field+`: "`+secret+`"
`, ":8:")
			if !strings.Contains(err.Error(), "delivery."+field) {
				t.Errorf("delivery.%s: error does not name the field: %v", field, err)
			}
			if strings.Contains(err.Error(), "TOPSECRET") {
				t.Errorf("delivery.%s: error repeats the value: %v", field, err)
			}
		}
	}
}

// An endpoint URL url.Parse refuses is described without the part it
// quotes: a password holding "/" ends the authority early, and the rest
// of it came back as an "invalid port".
func TestEndpointURLErrorHidesURLParts(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"https://api:SECRET/rest@hooks.example/in",
		"https://hooks.example:SECRET/in",
	} {
		_, err := loadWritten(t, `source:
  dsn: postgres://walhook@localhost/app
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
endpoints:
  - id: ops
    url: "`+raw+`"
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
`, ":9:")
		if !strings.Contains(err.Error(), "endpoints[0].url") {
			t.Fatalf("%s: err = %v, want one about endpoints[0].url", raw, err)
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%s: error repeats part of the URL: %v", raw, err)
		}
	}
}
