package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/config"
)

// exposedSecrets reports the secrets written in the config file itself
// (not taken from the environment) while the file's mode lets its group
// or every user of the machine read it: "" when there are none, or when
// only its owner can read it. The message names the fields, never their
// values. walhook check shows it as a warning and walhook run logs it.
func exposedSecrets(cfg *config.Config) string {
	fi, err := os.Stat(cfg.File)
	if err != nil || fi.Mode().Perm()&0o044 == 0 {
		return ""
	}
	data, err := os.ReadFile(cfg.File)
	if err != nil {
		return ""
	}
	fields := literalSecrets(cfg, data)
	if len(fields) == 0 {
		return ""
	}
	return fmt.Sprintf("%s has mode %#o (readable by %s) and holds secrets written in it: %s",
		cfg.File, fi.Mode().Perm(), readers(fi.Mode().Perm()), strings.Join(fields, ", "))
}

// exposedSecretsFix is the fix exposedSecrets' warning gives.
func exposedSecretsFix(cfg *config.Config) string {
	return "chmod 600 " + cfg.File + ", or take the secrets from the environment (${VAR})"
}

func readers(perm fs.FileMode) string {
	switch {
	case perm&0o004 != 0:
		return "every user"
	default:
		return "its group"
	}
}

// literalSecrets names the secret fields whose values are written in the
// file: an API key or an endpoint secret found verbatim in it (they are
// long random strings), a DSN whose password is there without a ${…}.
func literalSecrets(cfg *config.Config, data []byte) []string {
	var out []string
	for i, k := range cfg.API.Keys {
		if k.Key != "" && bytes.Contains(data, []byte(k.Key)) {
			out = append(out, fmt.Sprintf("api.keys[%d]", i))
		}
	}
	for i, e := range cfg.Endpoints {
		if e.Secret != "" && bytes.Contains(data, []byte(e.Secret)) {
			out = append(out, fmt.Sprintf("endpoints[%d].secret", i))
		}
	}
	var raw struct {
		Source struct {
			DSN string `yaml:"dsn"`
		} `yaml:"source"`
		Store struct {
			DSN string `yaml:"dsn"`
		} `yaml:"store"`
	}
	// Load has decoded this file already; a value of another shape only
	// leaves raw's field empty.
	_ = yaml.Unmarshal(data, &raw)
	if literalPassword(raw.Source.DSN, cfg.Source.DSN) {
		out = append(out, "source.dsn's password")
	}
	if raw.Store.DSN != "" && literalPassword(raw.Store.DSN, cfg.Store.DSN) {
		out = append(out, "store.dsn's password")
	}
	return out
}

var envRefRE = regexp.MustCompile(`\$\{[^}]*\}`)

// literalPassword reports whether raw, a DSN as written in the file,
// holds the password of dsn, the DSN after ${…} expansion: raw contains
// it, and the password read from raw with every ${…} replaced by a marker
// is the same. (A password from PGPASSWORD or a password file is read
// into both, but is not in raw.)
func literalPassword(raw, dsn string) bool {
	if raw == "" {
		return false
	}
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil || pc.Password == "" {
		return false
	}
	pw := pc.Password
	if !strings.Contains(raw, pw) && !strings.Contains(raw, url.PathEscape(pw)) && !strings.Contains(raw, url.QueryEscape(pw)) {
		return false
	}
	rc, err := pgconn.ParseConfig(envRefRE.ReplaceAllLiteralString(raw, "walhook-from-env"))
	return err == nil && rc.Password == pw
}
