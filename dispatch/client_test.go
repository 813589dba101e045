package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A receiver's Retry-After, as Send reads it from a 429, and when the
// default policy then schedules attempt 2 (schedule: +1 min; cap: 1 h).
// Values too large for a time.Duration must saturate to the cap, not wrap
// to a tiny delay that lets the schedule win.
func TestSendRetryAfter(t *testing.T) {
	t.Parallel()
	var header string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", header)
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	client, err := NewClient(ClientOptions{Allow: []string{"127.0.0.1"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	key := mustKey(t, NewSecret())

	const slack = 5 * time.Second // an HTTP date has whole seconds
	date := func(d time.Duration, layout string) string { return time.Now().Add(d).UTC().Format(layout) }
	for _, tc := range []struct {
		name, header string
		hint, next   time.Duration
	}{
		{"one hour", "3600", time.Hour, time.Hour},
		{"a day: capped", "86400", 24 * time.Hour, time.Hour},
		{"beyond time.Duration (wrapped to 0)", "9999999999", maxDuration, time.Hour},
		{"beyond time.Duration (wrapped to 0.29s)", "18446744074", maxDuration, time.Hour},
		{"beyond uint64", "99999999999999999999999", maxDuration, time.Hour},
		{"date in 30 min", date(30*time.Minute, http.TimeFormat), 30 * time.Minute, 30 * time.Minute},
		{"date in 2 h: capped", date(2*time.Hour, http.TimeFormat), 2 * time.Hour, time.Hour},
		{"RFC 850 date", date(10*time.Minute, time.RFC850), 10 * time.Minute, 10 * time.Minute},
		{"asctime date", date(10*time.Minute, time.ANSIC), 10 * time.Minute, 10 * time.Minute},
		{"past date", date(-time.Hour, http.TimeFormat), 0, time.Minute},
		{"negative", "-60", 0, time.Minute},
		{"garbage", "soon", 0, time.Minute},
		{"fraction", "1.5", 0, time.Minute},
		{"zero", "0", 0, time.Minute},
	} {
		header = tc.header
		res := client.Send(context.Background(), Request{URL: srv.URL, ID: "id-1", Event: "a.b", Body: []byte(`{}`), Keys: [][]byte{key}})
		if res.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("%s: status %d (%v)", tc.name, res.StatusCode, res.Err)
		}
		if res.RetryAfter > tc.hint || res.RetryAfter < tc.hint-slack && tc.hint != maxDuration {
			t.Errorf("%s: Retry-After %q read as %s, want %s", tc.name, tc.header, res.RetryAfter, tc.hint)
		}
		now := time.Now()
		at, ok := RetryPolicy{Rand: func() float64 { return 0 }}.Next(1, now, res.RetryAfter)
		if got := at.Sub(now); !ok || got > tc.next || got < tc.next-slack {
			t.Errorf("%s: Retry-After %q: next attempt in %s (ok %v), want %s", tc.name, tc.header, got, ok, tc.next)
		}
	}
}

const maxDuration = time.Duration(1<<63 - 1)

// parseRetryAfter on its own, with a fixed clock.
func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"3600", time.Hour},
		{" 120 ", 2 * time.Minute},
		{"9223372036", 9223372036 * time.Second}, // the largest that fits
		{"9223372037", maxDuration},
		{"9999999999", maxDuration},
		{"18446744074", maxDuration},
		{"+60", 0},
		{"-60", 0},
		{"6O", 0},
		{"Fri, 02 Jan 2026 04:04:05 GMT", time.Hour},
		{"Friday, 02-Jan-26 03:14:05 GMT", 10 * time.Minute},
		{"Fri Jan  2 03:05:05 2026", time.Minute},
		{"Fri, 02 Jan 2026 03:04:05 GMT", 0},
		{"Thu, 01 Jan 2026 03:04:05 GMT", 0},
		{"Fri, 02 Jan 9999 03:04:05 GMT", maxDuration},
		{"tomorrow", 0},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// A host name resolving to a blocked and an allowed address: the blocked
// one is skipped and the allowed one dialled, whatever the order; when the
// allowed one is down the attempt is an ordinary, retryable connection
// failure. Only a name whose every address is blocked fails permanently.
// (net.Dialer returns the first address's error, which made a blocked
// first address fail the delivery for good.)
func TestSendMixedBlockedAndAllowedAddresses(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	srvURL, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// A port on 127.0.0.1 where nothing listens: the allowed receiver, down.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downPort := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	// 127.0.0.1 stands for a public address: allowlisted by IP, so the
	// host name itself is not, and goes through the guarded dialer.
	client, err := NewClient(ClientOptions{AllowHTTP: true, Allow: []string{"127.0.0.1"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	var lookups atomic.Int32
	client.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		lookups.Add(1)
		var ips []netip.Addr
		for _, s := range strings.Split(strings.TrimSuffix(host, ".test"), "-") {
			ips = append(ips, netip.MustParseAddr(strings.ReplaceAll(s, "_", ".")))
		}
		return ips, nil
	}
	key := mustKey(t, NewSecret())
	for _, tc := range []struct {
		name, host, port string
		status           int
		permanent        bool
		blocked          bool
	}{
		{"blocked first, allowed down", "10_0_0_1-127_0_0_1.test", downPort, 0, false, false},
		{"allowed down, blocked last", "127_0_0_1-169_254_169_254.test", downPort, 0, false, false},
		{"blocked first, allowed up", "10_0_0_1-127_0_0_1.test", srvURL.Port(), http.StatusNoContent, false, false},
		{"all blocked", "10_0_0_1-192_168_1_1.test", srvURL.Port(), 0, true, true},
		{"only blocked", "169_254_169_254.test", srvURL.Port(), 0, true, true},
	} {
		res := client.Send(context.Background(), Request{URL: "http://" + net.JoinHostPort(tc.host, tc.port) + "/hook", ID: "id-1", Event: "a.b", Body: []byte(`{}`), Keys: [][]byte{key}})
		if res.StatusCode != tc.status || res.Permanent != tc.permanent || errors.Is(res.Err, ErrBlockedAddress) != tc.blocked {
			t.Errorf("%s: status %d, permanent %v, err %v; want status %d, permanent %v, blocked %v",
				tc.name, res.StatusCode, res.Permanent, res.Err, tc.status, tc.permanent, tc.blocked)
		}
		if tc.status == 0 && !tc.blocked && !strings.Contains(fmt.Sprint(res.Err), "connection refused") {
			t.Errorf("%s: err %v, want the allowed address's connection refused", tc.name, res.Err)
		}
	}
	if lookups.Load() == 0 {
		t.Fatal("the client's lookup was never called")
	}
}
