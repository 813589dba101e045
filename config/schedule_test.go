package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The dispatcher makes the first attempt at once and never reads the first
// retry_schedule entry, so a non-zero one is refused rather than ignored.
func TestRetryScheduleFirstEntry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		schedule, want string // want "" = accepted
	}{
		{"[0s, 1m, 5m]", ""},
		{"[0s]", ""},
		{"[0ms, 1m]", ""},
		{"[5m, 1m, 5m]", `:8:20: delivery.retry_schedule[0]: must be 0s, got 5m0s: the first attempt is made at once`},
		{"[1s]", `:8:20: delivery.retry_schedule[0]: must be 0s, got 1s`},
		// Negative is its own message, not this one too.
		{"[-1s, 1m]", `:8:20: delivery.retry_schedule[0]: must not be negative, got -1s`},
	} {
		t.Run(tc.schedule, func(t *testing.T) {
			t.Parallel()
			_, err := loadWritten(t, `source:
  dsn: postgres://walhook@localhost/app
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
delivery:
  retry_schedule: `+tc.schedule+`
`, tc.want)
			if err == nil {
				return
			}
			if n := strings.Count(err.Error(), "retry_schedule[0]"); n != 1 {
				t.Fatalf("%d errors for retry_schedule[0], want 1:\n%v", n, err)
			}
		})
	}
}

// loadWritten writes yaml to a file and loads it. With want "" the file
// must load; otherwise it must be refused with an error that contains the
// file's path followed by want, which is returned for further checks.
func loadWritten(t *testing.T, yaml, want string) (path string, err error) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path, env(nil))
	switch {
	case want == "" && err != nil:
		t.Fatalf("refused: %v", err)
	case want == "":
		return path, nil
	case err == nil:
		t.Fatalf("accepted, want an error containing %s", want)
	case !strings.Contains(err.Error(), path+want):
		t.Fatalf("error\n%s\nwant it to contain\n%s%s", err, path, want)
	}
	return path, err
}
