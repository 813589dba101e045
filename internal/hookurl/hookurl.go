// Package hookurl holds what the config check and the delivery client
// share about endpoint URLs, so both say the same thing about one.
package hookurl

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
)

// ParseProblem is url.Parse's error without the URL, which may carry a
// token, or the part of it that an "invalid port" quotes: a password
// holding "/" ends the host early, and the rest of it became the port.
func ParseProblem(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if strings.HasPrefix(err.Error(), "invalid port ") {
		return "invalid port after the host (or user info in it, which is refused)"
	}
	return err.Error()
}

// PortOK reports whether a URL's port (url.URL.Port, "" for none) can be
// dialled: url.Parse takes any digits.
func PortOK(p string) bool {
	if p == "" {
		return true
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}
