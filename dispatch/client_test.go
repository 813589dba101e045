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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	srvURL, downPort := upAndDownReceivers(t)

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
		return hostAddrs(host), nil
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
		{"blocked IPv6 first, allowed up", "fd00xx1-127_0_0_1.test", srvURL.Port(), http.StatusNoContent, false, false},
		{"allowed down, blocked IPv6 last", "127_0_0_1-fe80xx1.test", downPort, 0, false, false},
		{"all blocked, both families", "fd00xx1-10_0_0_1-xx1.test", srvURL.Port(), 0, true, true},
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

// hostAddrs is what the test lookups resolve a name to: its labels before
// ".test", split at "-", with "_" for "." and "x" for ":"
// ("fd00xx1-10_0_0_1.test" is fd00::1 and 10.0.0.1).
func hostAddrs(host string) []netip.Addr {
	var ips []netip.Addr
	for _, s := range strings.Split(strings.TrimSuffix(host, ".test"), "-") {
		ips = append(ips, netip.MustParseAddr(strings.NewReplacer("_", ".", "x", ":").Replace(s)))
	}
	return ips
}

// Happy Eyeballs: a name with IPv6 and IPv4 addresses races the two
// families as net.Dialer does, the first address's family first and the
// other 300ms later (or at once when the first family has failed). With
// the IPv6 address blackholed (its dial only ends when cancelled), a
// serial dial spent half the 30s timeout on it before trying IPv4; raced,
// the IPv4 receiver answers well within 5s and the IPv6 dial is
// abandoned. When every address fails, the error is still the first
// address's, and blocked ones still only make the attempt permanent when
// all are blocked.
func TestSendHappyEyeballs(t *testing.T) {
	t.Parallel()
	srvURL, downPort := upAndDownReceivers(t)

	// 2001:db8::/32 is never dialled for real: ::1 hangs until its dial
	// is cancelled, ::2 fails at once; 127.0.0.1 is dialled for real.
	client, err := NewClient(ClientOptions{AllowHTTP: true, Allow: []string{"127.0.0.1", "2001:db8::/32"}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	client.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		return hostAddrs(host), nil
	}
	real := client.dial
	blackholed := make(chan string, 10) // the blackholed dials, once abandoned
	var mu sync.Mutex
	var dialled []string
	client.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap := netip.MustParseAddrPort(addr)
		mu.Lock()
		dialled = append(dialled, ap.Addr().String())
		mu.Unlock()
		switch ap.Addr() {
		case netip.MustParseAddr("2001:db8::1"):
			<-ctx.Done()
			blackholed <- addr
			return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
		case netip.MustParseAddr("2001:db8::2"):
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ENETUNREACH}
		}
		return real(ctx, network, addr)
	}
	key := mustKey(t, NewSecret())
	for _, tc := range []struct {
		name, host, port string
		status           int
		blocked          bool
		errHas           string // for a failure: the first allowed address's error
		dialled          []string
	}{
		{"IPv6 blackholed, IPv4 up", "2001xdb8xx1-127_0_0_1.test", srvURL.Port(), http.StatusNoContent, false, "",
			[]string{"2001:db8::1", "127.0.0.1"}},
		{"IPv6 blackholed twice, IPv4 up", "2001xdb8xx1-2001xdb8xx1-127_0_0_1.test", srvURL.Port(), http.StatusNoContent, false, "",
			[]string{"2001:db8::1", "127.0.0.1"}},
		{"IPv6 unreachable, IPv4 up", "2001xdb8xx2-127_0_0_1.test", srvURL.Port(), http.StatusNoContent, false, "",
			[]string{"2001:db8::2", "127.0.0.1"}},
		{"blocked, IPv6 blackholed, IPv4 up", "10_0_0_1-2001xdb8xx1-127_0_0_1.test", srvURL.Port(), http.StatusNoContent, false, "",
			[]string{"2001:db8::1", "127.0.0.1"}},
		{"IPv6 unreachable, IPv4 down", "2001xdb8xx2-127_0_0_1.test", downPort, 0, false, "network is unreachable",
			[]string{"2001:db8::2", "127.0.0.1"}},
		{"IPv4 down, IPv6 unreachable", "127_0_0_1-2001xdb8xx2.test", downPort, 0, false, "connection refused",
			[]string{"127.0.0.1", "2001:db8::2"}},
		{"blocked, IPv6 unreachable, IPv4 down", "fd00xx1-2001xdb8xx2-127_0_0_1.test", downPort, 0, false, "network is unreachable",
			[]string{"2001:db8::2", "127.0.0.1"}},
		{"all blocked, both families", "fd00xx1-169_254_169_254.test", srvURL.Port(), 0, true, "", nil},
		// Last: should 127.0.0.1 take over 300ms, the IPv6 dial starts
		// and may record itself after Send returned.
		{"IPv4 up, IPv6 blackholed", "127_0_0_1-2001xdb8xx1.test", srvURL.Port(), http.StatusNoContent, false, "", nil},
	} {
		mu.Lock()
		dialled = nil
		mu.Unlock()
		res := client.Send(context.Background(), Request{URL: "http://" + net.JoinHostPort(tc.host, tc.port) + "/hook", ID: "id-1", Event: "a.b", Body: []byte(`{}`), Keys: [][]byte{key}})
		if res.StatusCode != tc.status || res.Permanent != tc.blocked || errors.Is(res.Err, ErrBlockedAddress) != tc.blocked {
			t.Errorf("%s: status %d, permanent %v, err %v; want status %d, permanent and blocked %v",
				tc.name, res.StatusCode, res.Permanent, res.Err, tc.status, tc.blocked)
		}
		if want := map[bool]int{true: 0, false: 1}[tc.blocked]; res.Signatures != want {
			t.Errorf("%s: %d signatures, want %d (0 when nothing was sent)", tc.name, res.Signatures, want)
		}
		if tc.errHas != "" && !strings.Contains(fmt.Sprint(res.Err), tc.errHas) {
			t.Errorf("%s: err %v, want the first allowed address's %q", tc.name, res.Err, tc.errHas)
		}
		// Only a race gets here this soon: a serial dial gives a
		// blackholed address half of the 30s.
		if res.Duration > 5*time.Second {
			t.Errorf("%s: took %s: the blackholed address was not raced", tc.name, res.Duration)
		}
		mu.Lock()
		got := dialled
		mu.Unlock()
		if tc.dialled != nil && !slices.Equal(got, tc.dialled) {
			t.Errorf("%s: dialled %v, want %v", tc.name, got, tc.dialled)
		}
		if slices.Contains(got, "2001:db8::1") {
			select {
			case <-blackholed:
			case <-time.After(5 * time.Second):
				t.Errorf("%s: the blackholed dial was not abandoned", tc.name)
			}
		}
	}
}

// upAndDownReceivers starts a receiver that answers 204 and returns its
// URL, with a port on 127.0.0.1 where nothing listens: a receiver that is
// down.
func upAndDownReceivers(t *testing.T) (up *url.URL, downPort string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	up, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downPort = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return up, downPort
}

// TLS is verified against the system's roots: a receiver with a
// certificate nobody signed (httptest's) gets no request, and the attempt
// fails as retryable (a receiver fixes or renews its certificate, and the
// schedule carries the delivery over), with the reason said once.
func TestSendVerifiesTLS(t *testing.T) {
	t.Parallel()
	var reached atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) }))
	defer srv.Close()
	client, err := NewClient(ClientOptions{Allow: []string{"127.0.0.1"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	res := client.Send(context.Background(), Request{URL: srv.URL, ID: "id-1", Event: "a.b", Body: []byte(`{}`), Keys: [][]byte{mustKey(t, NewSecret())}})
	if res.Err == nil || res.StatusCode != 0 || res.Permanent || reached.Load() != 0 {
		t.Fatalf("untrusted certificate: status %d, err %v, permanent %v, requests %d; want a retryable TLS error and no request",
			res.StatusCode, res.Err, res.Permanent, reached.Load())
	}
	if msg := res.Err.Error(); !strings.HasPrefix(msg, "tls: failed to verify certificate: x509: certificate signed by unknown authority") {
		t.Errorf("error %q: want crypto/tls's reason, said once", msg)
	}
}

// A receiver that accepts the connection and never answers the TLS
// handshake: the transport's handshake limit (10 s) ends the attempt well
// before the attempt's timeout, and the error must say which ran out,
// not "timeout after 30s".
func TestSendTLSHandshakeTimeoutSaysSo(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	defer func() { ln.Close(); held.Wait() }()
	held.Add(1)
	go func() {
		defer held.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // read nothing, answer nothing
		}
	}()
	client, err := NewClient(ClientOptions{Allow: []string{"127.0.0.1"}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	start := time.Now()
	res := client.Send(context.Background(), Request{URL: "https://" + ln.Addr().String() + "/hook", ID: "id-1", Event: "a.b",
		Body: []byte(`{}`), Keys: [][]byte{mustKey(t, NewSecret())}})
	took := time.Since(start)
	if !errors.Is(res.Err, ErrTimeout) || res.Permanent || res.StatusCode != 0 {
		t.Fatalf("hung handshake: status %d, err %v, permanent %v; want a retryable timeout", res.StatusCode, res.Err, res.Permanent)
	}
	msg := res.Err.Error()
	if strings.Contains(msg, "30s") || !strings.Contains(msg, "TLS handshake timeout") {
		t.Errorf("error %q after %s: want the handshake's limit named, not the attempt's 30s", msg, took.Round(time.Millisecond))
	}
}

// An attempt that outlives the timeout says so once: "timeout after
// 300ms", not "timeout after 300ms: timeout" (the context's cause
// repeated) or "…: context deadline exceeded".
func TestSendTimeoutSaysItOnce(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	client, err := NewClient(ClientOptions{Allow: []string{"127.0.0.1"}, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	res := client.Send(context.Background(), Request{URL: srv.URL + "/hook", ID: "id-1", Event: "a.b",
		Body: []byte(`{}`), Keys: [][]byte{mustKey(t, NewSecret())}})
	if !errors.Is(res.Err, ErrTimeout) {
		t.Fatalf("hung receiver: %v, want ErrTimeout", res.Err)
	}
	if msg := res.Err.Error(); msg != "timeout after 300ms" {
		t.Errorf("error %q, want %q", msg, "timeout after 300ms")
	}
}
