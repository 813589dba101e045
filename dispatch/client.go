package dispatch

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	retryablehttp "github.com/hashicorp/go-retryablehttp"

	"github.com/walhook/walhook/internal/hookurl"
)

// Defaults of ClientOptions.
const (
	DefaultTimeout         = 30 * time.Second
	DefaultMaxResponseBody = 1024
	DefaultUserAgent       = "walhook"
)

// drainLimit is how much of a response body beyond the kept prefix is read
// so the connection can go back to the pool. A receiver sending more gets
// its connection closed instead: reading it all would let it hold a worker.
const drainLimit = 64 << 10

var (
	// ErrBlockedAddress: the URL's IP, or an IP its host name resolved to
	// when dialled, is in a private or special range and not allowlisted.
	ErrBlockedAddress = errors.New("blocked address")
	// ErrRedirect: the receiver answered 3xx. Redirects are never followed
	// (a redirect to an internal address would bypass the SSRF guard, and
	// a moved receiver should be updated by an admin).
	ErrRedirect = errors.New("redirect not followed")
	// ErrInsecureURL: an http:// URL where only https:// is allowed.
	ErrInsecureURL = errors.New("insecure url")
	// ErrMalformedURL: not an absolute http(s) URL with a host, or with user
	// info (credentials in a URL end up in logs).
	ErrMalformedURL = errors.New("malformed url")
	// ErrTimeout: no complete response within the per-attempt timeout.
	ErrTimeout = errors.New("timeout")
	// ErrNoKey: a request without a signing key; walhook never sends an
	// unsigned webhook.
	ErrNoKey = errors.New("no signing key")
)

// StatusError is Result.Err for a response that is not 2xx (and not 3xx,
// which is ErrRedirect).
type StatusError struct {
	StatusCode int
}

func (e *StatusError) Error() string {
	if t := http.StatusText(e.StatusCode); t != "" {
		return "http status " + strconv.Itoa(e.StatusCode) + " " + t
	}
	return "http status " + strconv.Itoa(e.StatusCode)
}

// ClientOptions configure a Client. The zero value is usable.
type ClientOptions struct {
	// Timeout bounds one attempt: connect, TLS, request, response headers
	// and the kept body prefix. Default 30s.
	Timeout time.Duration
	// AllowHTTP permits http:// URLs to any host (development only).
	AllowHTTP bool
	// Allow lists CIDRs ("10.0.0.0/8"), single IPs and host names
	// ("hooks.internal", "*.hooks.internal") that may be dialled although
	// they are in a blocked range; http:// is allowed to them too.
	Allow []string
	// MaxResponseBody is how many response body bytes Result.Body keeps.
	// Default 1024; negative keeps none.
	MaxResponseBody int
	// UserAgent is sent with every request. Default "walhook".
	UserAgent string
	// Now is the clock the signature timestamp is read from. Default
	// time.Now.
	Now func() time.Time
}

// Client sends one webhook attempt at a time. It never retries by itself:
// retries belong to the outbox schedule (RetryPolicy), so one Send is
// exactly one request that the delivery log records. Safe for concurrent
// use.
type Client struct {
	hc         *http.Client
	timeout    time.Duration
	allowHTTP  bool
	allowNets  []netip.Prefix
	allowHosts []string // lower case, no trailing dot; "*.x" matches below x
	maxBody    int
	userAgent  string
	now        func() time.Time
	// lookup resolves a host name for the guarded dialer:
	// net.DefaultResolver.LookupNetIP; tests replace it.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// dial connects to one IP literal for the guarded dialer: the DialContext
	// of a net.Dialer whose Control checks the IP; tests replace it.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Request is one webhook attempt.
type Request struct {
	URL   string
	ID    string // delivery id: X-Webhook-ID / webhook-id
	Event string // X-Webhook-Event
	Body  []byte // sent as exact bytes
	Keys  [][]byte
}

// Result is the outcome of one attempt. It is a value, not an error,
// because every attempt is recorded in the delivery log whatever happened.
type Result struct {
	// StatusCode is 0 when no response arrived.
	StatusCode int
	Duration   time.Duration
	// Err is nil for a 2xx; otherwise it wraps ErrBlockedAddress,
	// ErrRedirect, ErrInsecureURL, ErrMalformedURL, ErrTimeout, ErrNoKey, a
	// *StatusError, the context's error, or a transport error.
	Err error
	// Body is a prefix of the response body (at most MaxResponseBody).
	Body []byte
	// RetryAfter is the receiver's Retry-After on a 429 or 503 (seconds or
	// HTTP date), 0 when absent. RetryPolicy.Next honours it, capped.
	RetryAfter time.Duration
	// Permanent: retrying the same request cannot succeed without a
	// change of configuration or URL (blocked address, bad URL, no key).
	// The delivery should fail now instead of waiting out the schedule.
	Permanent bool
	// Gone: the receiver answered 410; the endpoint is to be disabled at
	// once. The delivery itself stays retryable so re-enabling resumes it.
	Gone bool
	// Signatures is how many signatures the request carried: 0 when
	// the delivery policy refused it before anything was sent (the URL,
	// every address of its host, no key).
	Signatures int
}

// OK reports whether the attempt succeeded: a 2xx within the timeout.
func (r Result) OK() bool {
	return r.Err == nil && r.StatusCode >= 200 && r.StatusCode <= 299
}

// NewClient returns a client with a connection pool tuned for many
// endpoints. The only error is a bad Allow entry.
func NewClient(o ClientOptions) (*Client, error) {
	c := &Client{
		timeout:   o.Timeout,
		allowHTTP: o.AllowHTTP,
		maxBody:   o.MaxResponseBody,
		userAgent: o.UserAgent,
		now:       o.Now,
		lookup:    net.DefaultResolver.LookupNetIP,
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.maxBody == 0 {
		c.maxBody = DefaultMaxResponseBody
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	if c.now == nil {
		c.now = time.Now
	}
	for _, a := range o.Allow {
		if err := c.addAllow(a); err != nil {
			return nil, err
		}
	}

	guarded := &net.Dialer{Timeout: c.timeout, KeepAlive: 30 * time.Second, Control: c.controlDial}
	open := &net.Dialer{Timeout: c.timeout, KeepAlive: 30 * time.Second}
	c.dial = guarded.DialContext
	tr := &http.Transport{
		// No proxy: the guard checks the dialled IP, which would be the
		// proxy's, so HTTP(S)_PROXY from the environment would bypass it.
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return guarded.DialContext(ctx, network, addr) // fails its own way
			}
			if c.hostAllowed(host) {
				return open.DialContext(ctx, network, addr)
			}
			return c.dialGuarded(ctx, network, host, port)
		},
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		// The body is only kept as a short prefix for the delivery log;
		// asking for gzip would make that prefix unreadable or cost CPU.
		DisableCompression: true,
		// TLSClientConfig nil: certificates verified against the system
		// roots, TLS 1.2 minimum (Go's client defaults).
	}
	c.hc = &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return c, nil
}

// CloseIdleConnections closes pooled connections (at shutdown).
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

func (c *Client) addAllow(a string) error {
	s := strings.TrimSpace(a)
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Zone() != "" {
			return fmt.Errorf("delivery allow entry %q: a CIDR cannot have a zone", a)
		}
		p = p.Masked()
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		c.allowNets = append(c.allowNets, p)
		return nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		ip = ip.WithZone("").Unmap()
		c.allowNets = append(c.allowNets, netip.PrefixFrom(ip, ip.BitLen()))
		return nil
	}
	h := strings.TrimSuffix(strings.ToLower(s), ".")
	if !validHostPattern(h) {
		return fmt.Errorf("delivery allow entry %q: not a CIDR, an IP address or a host name", a)
	}
	c.allowHosts = append(c.allowHosts, h)
	return nil
}

// validHostPattern accepts DNS names (letters, digits, '-', '_') with an
// optional leading "*." wildcard label.
func validHostPattern(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !('a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '-' || b == '_') {
				return false
			}
		}
	}
	return true
}

func (c *Client) hostAllowed(host string) bool {
	if len(c.allowHosts) == 0 {
		return false
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	for _, a := range c.allowHosts {
		if suffix, ok := strings.CutPrefix(a, "*"); ok {
			if strings.HasSuffix(h, suffix) && len(h) > len(suffix) {
				return true
			}
		} else if h == a {
			return true
		}
	}
	return false
}

func (c *Client) ipAllowed(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	for _, p := range c.allowNets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// checkIP returns an error wrapping ErrBlockedAddress when ip may not be
// dialled.
func (c *Client) checkIP(ip netip.Addr) error {
	if c.ipAllowed(ip) {
		return nil
	}
	if reason := blockedReason(ip); reason != "" {
		return fmt.Errorf("%w: %s is %s (add it to delivery.allow to permit it)", ErrBlockedAddress, ip.WithZone(""), reason)
	}
	return nil
}

// controlDial is the net.Dialer Control hook: it runs after DNS
// resolution, just before connect(2), with the IP actually dialled.
func (c *Client) controlDial(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dialled address %q", ErrBlockedAddress, address)
	}
	return c.checkIP(ap.Addr())
}

// dialGuarded resolves host itself, drops the addresses in a blocked range
// and dials the others by IP, so what is dialled is what was checked (a
// name re-resolving to a blocked address, as in DNS rebinding, cannot slip
// in between; Control checks each dialled IP once more). IPv6 and IPv4
// addresses are raced as net.Dialer does it (dialParallel).
//
// The error wraps ErrBlockedAddress, which makes the attempt permanent,
// only when every address the name resolved to is blocked. Left to
// net.Dialer, a name with a blocked and an allowed address failed with the
// first address's error: when that was the blocked one, an allowed
// receiver that was merely down failed its delivery with no retries.
func (c *Client) dialGuarded(ctx context.Context, network, host, port string) (net.Conn, error) {
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = c.lookup(ctx, lookupNetwork(network), host)
		if err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Err: err}
		}
	}
	var allowed []netip.Addr
	var blocked error
	nBlocked := 0
	for _, ip := range ips {
		ip = ip.Unmap() // LookupNetIP may return IPv4 as ::ffff:a.b.c.d
		if err := c.checkIP(ip); err != nil {
			if blocked == nil {
				blocked = err
			}
			nBlocked++
		} else {
			allowed = append(allowed, ip)
		}
	}
	if len(allowed) == 0 {
		if blocked == nil {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}}
		}
		if nBlocked > 1 {
			blocked = fmt.Errorf("%w (and the %d other addresses %s resolved to)", blocked, nBlocked-1, host)
		}
		return nil, &net.OpError{Op: "dial", Net: network, Err: blocked}
	}
	conn, first := c.dialParallel(ctx, network, port, allowed)
	if first == nil {
		return conn, nil
	}
	if nBlocked > 0 {
		// Not wrapping blocked: the allowed addresses failed, so the
		// attempt is an ordinary, retryable connection failure.
		first = fmt.Errorf("%w (%d of the %d addresses %s resolved to skipped: in a blocked range)", first, nBlocked, len(ips), host)
	}
	return nil, first
}

// fallbackDelay is how long the addresses of the first address's family
// get before the other family's are dialled too: net.Dialer's default
// FallbackDelay, as RFC 8305 recommends.
const fallbackDelay = 300 * time.Millisecond

// dialParallel is Happy Eyeballs (RFC 8305) as net.Dialer does it: the
// addresses of the first one's family (primaries) are dialled in turn; if
// none has connected after fallbackDelay, or as soon as all have failed,
// the other family's (fallbacks) are dialled in turn alongside. The first
// connection wins, the other dials are cancelled and a later connection is
// closed. When all fail the error is the primaries', that is the first
// address's, as with a serial dial. Without this a receiver whose IPv6
// is blackholed cost every new connection half the attempt's timeout.
func (c *Client) dialParallel(ctx context.Context, network, port string, ips []netip.Addr) (net.Conn, error) {
	var primaries, fallbacks []netip.Addr
	for _, ip := range ips {
		if ip.Is4() == ips[0].Is4() {
			primaries = append(primaries, ip)
		} else {
			fallbacks = append(fallbacks, ip)
		}
	}
	if len(fallbacks) == 0 {
		return c.dialSerial(ctx, network, port, primaries)
	}

	type result struct {
		conn    net.Conn
		err     error
		primary bool
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the dial still running when one has won
	returned := make(chan struct{})
	defer close(returned)
	results := make(chan result)
	race := func(ips []netip.Addr, primary bool) {
		conn, err := c.dialSerial(ctx, network, port, ips)
		select {
		case results <- result{conn, err, primary}:
		case <-returned:
			if conn != nil {
				conn.Close() // connected after the other won
			}
		}
	}
	go race(primaries, true)
	fallback := time.NewTimer(fallbackDelay)
	defer fallback.Stop()
	var primaryErr error
	for done := 0; ; {
		select {
		case <-fallback.C:
			go race(fallbacks, false)
		case r := <-results:
			if r.err == nil {
				return r.conn, nil
			}
			if r.primary {
				primaryErr = r.err
				if fallback.Stop() {
					fallback.Reset(0) // not started yet: start it now
				}
			}
			if done++; done == 2 {
				return nil, primaryErr
			}
		}
	}
}

// dialSerial dials ips in turn and returns the first connection, or the
// first error when all fail.
func (c *Client) dialSerial(ctx context.Context, network, port string, ips []netip.Addr) (net.Conn, error) {
	var first error
	for i, ip := range ips {
		// Split the time left between the addresses still to try, as
		// net.Dialer does, so one that hangs leaves time for the next.
		dctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := c.partialDeadline(ctx, len(ips)-i); ok {
			dctx, cancel = context.WithDeadline(ctx, dl)
		}
		conn, err := c.dial(dctx, network, net.JoinHostPort(ip.String(), port))
		cancel()
		if err == nil {
			return conn, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// partialDeadline is the deadline of one of n remaining dials: an equal
// share of the time left (the context's deadline, else the timeout), at
// least 2s unless less is left; ok false when n is 1 and nothing bounds it
// beyond the context.
func (c *Client) partialDeadline(ctx context.Context, n int) (time.Time, bool) {
	if n <= 1 {
		return time.Time{}, false
	}
	now := time.Now()
	deadline, ok := ctx.Deadline()
	if !ok || deadline.Sub(now) > c.timeout {
		deadline = now.Add(c.timeout)
	}
	left := deadline.Sub(now)
	share := left / time.Duration(n)
	const saneMinimum = 2 * time.Second
	if share < saneMinimum {
		share = min(left, saneMinimum)
	}
	return now.Add(share), true
}

// lookupNetwork is the LookupNetIP network for a dial network.
func lookupNetwork(network string) string {
	switch network {
	case "tcp4":
		return "ip4"
	case "tcp6":
		return "ip6"
	}
	return "ip"
}

// ValidateURL checks an endpoint URL before it is stored or dialled: an
// absolute http(s) URL with a host and no user info; https unless
// AllowHTTP or the host is allowlisted; a literal IP must not be in a
// blocked range. Host names are checked when dialled (their addresses can
// change). Errors never contain the URL (it may carry a token).
func (c *Client) ValidateURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrMalformedURL, hookurl.ParseProblem(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: must be an absolute http:// or https:// URL", ErrMalformedURL)
	}
	if u.Opaque != "" {
		return fmt.Errorf("%w: must be an absolute http:// or https:// URL", ErrMalformedURL)
	}
	if u.User != nil {
		return fmt.Errorf("%w: must not contain user info (credentials in a URL end up in logs)", ErrMalformedURL)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%w: has no host", ErrMalformedURL)
	}
	if p := u.Port(); !hookurl.PortOK(p) {
		return fmt.Errorf("%w: port %q out of range", ErrMalformedURL, p)
	}
	hostOK := c.hostAllowed(host)
	ip, ipErr := netip.ParseAddr(host)
	literal := ipErr == nil
	if !literal && endsInNumber(host) {
		return fmt.Errorf("%w: the host ends in a number but is not an IP address as a.b.c.d (forms like 2130706433, 0x7f.1 or 0177.0.0.1 are not host names, and are looked up in DNS, not read as addresses)", ErrMalformedURL)
	}
	if u.Scheme == "http" && !c.allowHTTP && !hostOK && !(literal && c.ipAllowed(ip)) {
		return fmt.Errorf("%w: http:// is not allowed; use https://, or list the host in delivery.allow, or set delivery.allow_http for development", ErrInsecureURL)
	}
	if literal && !hostOK {
		return c.checkIP(ip)
	}
	return nil
}

// endsInNumber reports whether host's last label (a trailing dot aside) is
// a decimal or 0x-hex number, as in the IPv4 forms that inet_aton, curl
// and browsers read as addresses (2130706433, 0x7f.1, 0177.0.0.1, 127.1,
// 10.1.2.3.). No host name ends in one (RFC 3696 2: a top-level domain is
// not all-numeric), and the Go resolver asks DNS for such a name, so an
// endpoint with one could never be delivered to.
func endsInNumber(host string) bool {
	h := strings.TrimSuffix(host, ".")
	last := h[strings.LastIndexByte(h, '.')+1:]
	if hex, ok := strings.CutPrefix(strings.ToLower(last), "0x"); ok {
		return strings.Trim(hex, "0123456789abcdef") == ""
	}
	return isDigits(last)
}

// Send makes one attempt: it signs the body now (timestamp = Now().Unix()),
// POSTs it with the webhook headers and returns what happened.
func (c *Client) Send(ctx context.Context, req Request) (res Result) {
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()

	if err := c.ValidateURL(req.URL); err != nil {
		return Result{Err: err, Permanent: true}
	}
	if len(req.Keys) == 0 {
		return Result{Err: ErrNoKey, Permanent: true}
	}
	ts := c.now().Unix()
	sig := Sign(req.Keys, req.ID, ts, req.Body)
	res.Signatures = len(req.Keys)

	actx, cancel := context.WithTimeoutCause(ctx, c.timeout, ErrTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(actx, http.MethodPost, req.URL, bytes.NewReader(req.Body))
	if err != nil {
		res.Err, res.Permanent = fmt.Errorf("%w: %v", ErrMalformedURL, err), true
		return res
	}
	SetHeaders(hr.Header, req.ID, req.Event, ts, sig, c.userAgent)

	resp, err := c.hc.Do(hr)
	if err != nil {
		res.Err, res.Permanent = c.classify(ctx, actx, err)
		if errors.Is(res.Err, ErrBlockedAddress) {
			res.Signatures = 0 // refused before a connection: nothing was sent
		}
		return res
	}
	res.StatusCode = resp.StatusCode
	res.Body = readPrefix(resp.Body, c.maxBody)
	// Read a bounded rest so the connection can be reused; Close on an
	// unread body closes the connection instead.
	_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
	resp.Body.Close()

	code := resp.StatusCode
	switch {
	case code >= 200 && code <= 299:
	case code >= 300 && code <= 399:
		res.Err = fmt.Errorf("%w: http status %d, Location %s", ErrRedirect, code, describeLocation(resp.Header.Get("Location")))
	default:
		res.Err = &StatusError{StatusCode: code}
		res.Gone = code == http.StatusGone
		if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
			res.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), c.now())
		}
	}
	return res
}

// describeLocation is a redirect's Location for the delivery log without
// what may be secret: its user info, query and fragment (a receiver that
// redirects, e.g. http to https, echoes the endpoint URL's ?token=).
func describeLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return "(not a URL)"
	}
	query := u.RawQuery != "" || u.ForceQuery
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	s := u.String()
	if query {
		s += "?…"
	}
	return strconv.Quote(s)
}

// parseRetryAfter reads a Retry-After value: delay-seconds or an HTTP date
// (RFC 9110 10.2.3; http.ParseTime also takes the obsolete RFC 850 and
// asctime forms). Absent, negative or unreadable values and dates not
// after now give 0 (no hint). A delay too large for a time.Duration
// saturates instead of wrapping: RetryPolicy.Next caps it at
// RetryAfterCap, so a receiver asking for "forever" gets the cap, not an
// attempt on the plain schedule.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if isDigits(v) {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n > uint64(math.MaxInt64/time.Second) {
			// Only a range error is possible here: all digits.
			return math.MaxInt64
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	// Time.Sub saturates, so a date centuries away cannot wrap either.
	return max(t.Sub(now), 0)
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// classify turns a transport error into Result.Err and Result.Permanent.
func (c *Client) classify(parent, attempt context.Context, err error) (error, bool) {
	inner := err
	var ue *url.Error
	if errors.As(err, &ue) {
		// The url.Error text repeats the URL, which may carry a token.
		inner = ue.Err
	}
	switch {
	case errors.Is(err, ErrBlockedAddress):
		return inner, true
	case strings.HasPrefix(inner.Error(), "failed to parse Location header"):
		// net/http's text quotes the Location, which may echo a token.
		return fmt.Errorf("%w: Location (not a URL)", ErrRedirect), false
	case parent.Err() != nil:
		return fmt.Errorf("attempt abandoned: %w", context.Cause(parent)), false
	case context.Cause(attempt) == ErrTimeout || errors.Is(err, context.DeadlineExceeded):
		if inner == ErrTimeout || inner == context.DeadlineExceeded {
			// The context's own cause: saying it again says nothing.
			return fmt.Errorf("%w after %s", ErrTimeout, c.timeout), false
		}
		return fmt.Errorf("%w after %s: %v", ErrTimeout, c.timeout, inner), false
	case isTimeout(err):
		// A step's own limit, before the attempt's: the TLS handshake's
		// 10 s, a connect's. Its text says which; the attempt's timeout
		// is not what ran out.
		return fmt.Errorf("%w: %v", ErrTimeout, inner), false
	case isCertError(err):
		// go-retryablehttp calls certificate errors permanent; for an
		// outbox they are not: a receiver renews an expired certificate,
		// and the schedule should carry its deliveries over meanwhile.
		if strings.HasPrefix(inner.Error(), "tls: ") { // crypto/tls's own text says it already
			return inner, false
		}
		return fmt.Errorf("tls: %w", inner), false
	}
	// go-retryablehttp's classification of the rest: an invalid header or
	// an unsupported scheme fails the same way every time.
	retry, _ := retryablehttp.ErrorPropagatedRetryPolicy(context.Background(), nil, err)
	return inner, !retry
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isCertError(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
		verify   *tls.CertificateVerificationError
	)
	return errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &verify)
}

func readPrefix(r io.Reader, n int) []byte {
	if n <= 0 {
		return nil
	}
	buf := make([]byte, n)
	k, _ := io.ReadFull(r, buf)
	if k == 0 {
		return nil
	}
	return buf[:k]
}

// blockedRange is a range the client refuses to dial unless allowlisted.
type blockedRange struct {
	prefix netip.Prefix
	reason string
}

// blockedRanges: IANA special-purpose registries (RFC 6890 and updates)
// plus the cloud metadata address. IPv4-mapped IPv6 addresses are unmapped
// before the check, so ::ffff:127.0.0.1 is loopback.
var blockedRanges = func() []blockedRange {
	list := []struct{ cidr, reason string }{
		{"0.0.0.0/8", "unspecified (\"this network\")"},
		{"10.0.0.0/8", "private"},
		{"100.64.0.0/10", "carrier-grade NAT"},
		{"127.0.0.0/8", "loopback"},
		{"169.254.169.254/32", "the cloud metadata service"},
		{"169.254.0.0/16", "link-local"},
		{"172.16.0.0/12", "private"},
		{"192.0.0.0/24", "IETF protocol assignments"},
		{"192.0.2.0/24", "documentation (TEST-NET-1)"},
		{"192.88.99.0/24", "6to4 relay anycast"},
		{"192.168.0.0/16", "private"},
		{"198.18.0.0/15", "benchmarking"},
		{"198.51.100.0/24", "documentation (TEST-NET-2)"},
		{"203.0.113.0/24", "documentation (TEST-NET-3)"},
		{"224.0.0.0/4", "multicast"},
		{"240.0.0.0/4", "reserved"}, // includes broadcast 255.255.255.255
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"::/96", "IPv4-compatible (deprecated)"},
		{"64:ff9b:1::/48", "local-use NAT64"},
		{"100::/64", "discard-only"},
		{"2001::/32", "Teredo"},
		{"2001:2::/48", "benchmarking"},
		{"2001:db8::/32", "documentation"},
		{"2002::/16", "6to4"},
		{"fc00::/7", "private (unique local)"},
		{"fe80::/10", "link-local"},
		{"fec0::/10", "site-local (deprecated)"},
		{"ff00::/8", "multicast"},
	}
	out := make([]blockedRange, len(list))
	for i, r := range list {
		out[i] = blockedRange{netip.MustParsePrefix(r.cidr), r.reason}
	}
	return out
}()

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// blockedReason says why ip may not be dialled, or "" when it may.
func blockedReason(ip netip.Addr) string {
	if !ip.IsValid() {
		return "not a valid address"
	}
	// netip.Prefix.Contains is false for an address with a zone and for a
	// v4-mapped address against a v4 prefix, so normalise first.
	ip = ip.WithZone("").Unmap()
	// NAT64 (RFC 6052's well-known prefix): on an IPv6-only network with
	// DNS64 every IPv4 receiver resolves into it, and the gateway dials
	// the IPv4 address in its last 32 bits, which is what is checked.
	if nat64.Contains(ip) {
		b := ip.As16()
		if reason := blockedReason(netip.AddrFrom4([4]byte(b[12:]))); reason != "" {
			return reason + " (through NAT64)"
		}
		return ""
	}
	for _, r := range blockedRanges {
		if r.prefix.Contains(ip) {
			return r.reason
		}
	}
	return ""
}
