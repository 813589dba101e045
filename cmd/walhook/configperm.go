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
// holds the password of dsn, the DSN after ${…} expansion: raw itself
// names a password (user:password@ in a URL, a password parameter or
// keyword), and with every ${…} replaced by a marker it is the same. A
// password pgconn reads from PGPASSWORD, a password file or a service
// file is not in raw, even when its value happens to appear there (a
// password "postgres" for user postgres).
func literalPassword(raw, dsn string) bool {
	if raw == "" {
		return false
	}
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil || pc.Password == "" {
		return false
	}
	pw, ok := explicitPassword(envRefRE.ReplaceAllLiteralString(raw, "walhook-from-env"))
	return ok && pw == pc.Password
}

// explicitPassword is the password written in a DSN, in URL or keyword/
// value form, without what libpq would take from the environment.
func explicitPassword(dsn string) (string, bool) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", false
		}
		if q := u.Query(); q.Has("password") {
			return q.Get("password"), true
		}
		if u.User != nil {
			return u.User.Password()
		}
		return "", false
	}
	pw, found := "", false
	s := dsn
	for {
		s = strings.TrimLeft(s, " \t\n\r\v\f")
		if s == "" {
			return pw, found
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return pw, found
		}
		key := strings.TrimSpace(s[:eq])
		s = strings.TrimLeft(s[eq+1:], " \t\n\r\v\f")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			s = s[1:]
			for len(s) > 0 && s[0] != '\'' {
				if s[0] == '\\' && len(s) > 1 {
					s = s[1:]
				}
				val.WriteByte(s[0])
				s = s[1:]
			}
			if len(s) > 0 {
				s = s[1:]
			}
		} else {
			for len(s) > 0 && !strings.ContainsRune(" \t\n\r\v\f", rune(s[0])) {
				if s[0] == '\\' && len(s) > 1 {
					s = s[1:]
				}
				val.WriteByte(s[0])
				s = s[1:]
			}
		}
		if key == "password" {
			pw, found = val.String(), true
		}
	}
}
