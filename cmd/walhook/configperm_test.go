package main

import "testing"

func TestLiteralPasswordFromEnvironment(t *testing.T) {
	t.Setenv("PGPASSWORD", "postgres")
	raw := "postgres://postgres@db.example/app"
	if literalPassword(raw, raw) {
		t.Fatalf("password from PGPASSWORD reported as written in the file")
	}
}

func TestLiteralPasswordForms(t *testing.T) {
	t.Setenv("PGPASSWORD", "")
	t.Setenv("CKPW", "s3cret")
	for _, c := range []struct {
		raw, dsn string
		want     bool
	}{
		{"postgres://u:s3cret@h/db", "postgres://u:s3cret@h/db", true},
		{"postgres://u:s%40cret@h/db", "postgres://u:s%40cret@h/db", true},
		{"postgres://u@h/db?password=s3cret", "postgres://u@h/db?password=s3cret", true},
		{"host=h user=u password='s3 cret'", "host=h user=u password='s3 cret'", true},
		{"host=h user=u password=s3cret", "host=h user=u password=s3cret", true},
		{"postgres://u:${CKPW}@h/db", "postgres://u:s3cret@h/db", false},
		{"host=h user=u password=${CKPW}", "host=h user=u password=s3cret", false},
		{"${X}", "postgres://u:s3cret@h/db", false},
		{"postgres://u@h/db", "postgres://u@h/db", false},
	} {
		if got := literalPassword(c.raw, c.dsn); got != c.want {
			t.Errorf("literalPassword(%q) = %v, want %v", c.raw, got, c.want)
		}
	}
}
