// Package faultproxy is a TCP proxy for tests that breaks the network
// between walhook and what it talks to as production networks do: a reset
// of every connection (a load balancer or NAT that forgot them), a link
// that drops every packet for a while and then recovers (stall), one that
// drops the packets of the connections it had for good while new ones go
// through (a NAT mapping that timed out: Blackhole), a connection cut
// after so many bytes (mid-message), a request that arrives while its
// response is lost, and refused connections.
//
// The proxy forwards with plain reads and writes. While it holds data back
// it keeps both TCP connections open, so neither end learns anything from
// TCP itself: as with a real blackhole, only its own timeouts tell.
package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections to one target address.
type Proxy struct {
	target string
	ln     net.Listener

	mu          sync.Mutex
	links       map[*link]struct{}
	refuseUntil time.Time
	stallUntil  time.Time
	stallWake   chan struct{} // closed when a stall is lifted early
	rules       []*Rule
	closed      bool

	accepted atomic.Int64
	wg       sync.WaitGroup
}

// Start listens on a free loopback port and forwards to target (host:port).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, links: map[*link]struct{}{}, stallWake: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Open counts the connections open now.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, l := range links {
		l.close(true)
	}
	p.wg.Wait()
}

// ResetAll closes every open connection with a TCP RST on both sides, as
// a middlebox that dropped its state and answers with resets.
func (p *Proxy) ResetAll() int {
	links := p.snapshot()
	for _, l := range links {
		l.close(true)
	}
	return len(links)
}

// Stall stops forwarding in both directions on every connection, open
// or new, for d, without closing any: a link that drops every packet and
// recovers. What was held back is forwarded once the stall ends, as TCP
// would retransmit it.
func (p *Proxy) Stall(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stallUntil = time.Now().Add(d)
}

// Unstall ends a stall early.
func (p *Proxy) Unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stallUntil = time.Time{}
	close(p.stallWake)
	p.stallWake = make(chan struct{})
}

// Blackhole drops, for good, everything sent on the connections open now,
// in both directions, and keeps them open: a NAT or load balancer that
// forgot them while neither end was told. Either side that closes its
// connection has only its own half closed. New connections go through.
func (p *Proxy) Blackhole() int {
	links := p.snapshot()
	for _, l := range links {
		l.blackhole()
	}
	return len(links)
}

// Refuse resets every new connection at once for d.
func (p *Proxy) Refuse(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuseUntil = time.Now().Add(d)
}

// Action is what a Rule does to the connection it matched.
type Action int

const (
	// Reset resets the connection.
	Reset Action = iota
	// BlackholeConn drops everything on the connection from then on (see
	// Proxy.Blackhole).
	BlackholeConn
)

// Rule acts on a connection once the client has sent Match (nil matches
// at once): after the chunk holding it is forwarded, then After more bytes
// from the server (-1: act before forwarding the matching chunk).
type Rule struct {
	Match  []byte
	After  int64
	Action Action
	// Times is how many connections the rule acts on (0: one).
	Times int

	fired atomic.Int64
}

// Fired counts the connections the rule acted on.
func (r *Rule) Fired() int64 { return r.fired.Load() }

// AddRule arms r for the connections open now and new ones.
func (p *Proxy) AddRule(r *Rule) *Rule {
	if r.Times == 0 {
		r.Times = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append(p.rules, r)
	return r
}

// ClearRules disarms every rule.
func (p *Proxy) ClearRules() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = nil
}

func (p *Proxy) snapshot() []*link {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*link, 0, len(p.links))
	for l := range p.links {
		out = append(out, l)
	}
	return out
}

// stalled returns, while a stall lasts, how long it still lasts and a
// channel closed when it is lifted early.
func (p *Proxy) stalled() (time.Duration, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Until(p.stallUntil), p.stallWake
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.mu.Lock()
		refuse := time.Now().Before(p.refuseUntil) || p.closed
		p.mu.Unlock()
		if refuse {
			rst(c)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

type link struct {
	p              *Proxy
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
	holed          atomic.Bool
	sawClient      bytes.Buffer // the client's bytes, while a rule may still match
	mu             sync.Mutex
	armed          *Rule // a matched rule counting server bytes
	left           int64
}

func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		rst(c)
		return
	}
	l := &link{p: p, client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		rst(c)
		rst(s)
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pipe(c, s, true) }()
	go func() { defer wg.Done(); l.pipe(s, c, false) }()
	wg.Wait()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

func (l *link) close(reset bool) {
	l.once.Do(func() {
		close(l.done)
		if reset {
			rst(l.client)
			rst(l.server)
		} else {
			_ = l.client.Close()
			_ = l.server.Close()
		}
	})
}

func (l *link) blackhole() { l.holed.Store(true) }

// pipe copies from src to dst; fromClient tells the direction.
func (l *link) pipe(src, dst net.Conn, fromClient bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.holed.Load() {
			if !l.forward(buf[:n], dst, fromClient) {
				return
			}
		}
		if err != nil {
			if l.holed.Load() {
				// Only this half learns: the other end was told nothing.
				_ = src.Close()
				if !errors.Is(err, io.EOF) {
					return
				}
				return
			}
			l.close(false)
			return
		}
	}
}

// forward waits out a stall, applies the rules and writes b to dst. It
// reports false when the link is gone.
func (l *link) forward(b []byte, dst net.Conn, fromClient bool) bool {
	for {
		d, wake := l.p.stalled()
		if d <= 0 {
			break
		}
		t := time.NewTimer(d)
		select {
		case <-l.done:
			t.Stop()
			return false
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
	if l.holed.Load() {
		return true
	}
	if fromClient {
		if r := l.match(b); r != nil {
			if r.After < 0 {
				l.act(r)
				return l.holed.Load()
			}
			if _, err := dst.Write(b); err != nil {
				l.close(false)
				return false
			}
			if r.After == 0 {
				l.act(r)
			}
			return true
		}
	} else if n, r := l.serverBytes(len(b)); r != nil {
		if n > 0 {
			if _, err := dst.Write(b[:n]); err != nil {
				l.close(false)
				return false
			}
		}
		l.act(r)
		return l.holed.Load()
	}
	if _, err := dst.Write(b); err != nil {
		l.close(false)
		return false
	}
	return true
}

// match looks for an armed rule's Match in what the client sent so far.
func (l *link) match(b []byte) *Rule {
	l.p.mu.Lock()
	rules := l.p.rules
	l.p.mu.Unlock()
	if len(rules) == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.armed != nil {
		return nil
	}
	l.sawClient.Write(b)
	seen := l.sawClient.Bytes()
	for _, r := range rules {
		if r.fired.Load() >= int64(r.Times) || !bytes.Contains(seen, r.Match) {
			continue
		}
		if r.fired.Add(1) > int64(r.Times) {
			continue
		}
		l.sawClient.Reset()
		if r.After > 0 {
			l.armed, l.left = r, r.After
			return &Rule{After: 1} // forward, then count the server's bytes
		}
		return r
	}
	// Keep a tail long enough for a match that spans chunks.
	if keep := 4096; l.sawClient.Len() > keep {
		tail := append([]byte(nil), seen[len(seen)-keep:]...)
		l.sawClient.Reset()
		l.sawClient.Write(tail)
	}
	return nil
}

// serverBytes counts n bytes from the server against an armed rule and
// returns how many of them may still be forwarded before it acts.
func (l *link) serverBytes(n int) (int, *Rule) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.armed == nil {
		return n, nil
	}
	if int64(n) < l.left {
		l.left -= int64(n)
		return n, nil
	}
	r, k := l.armed, int(l.left)
	l.armed = nil
	return k, r
}

func (l *link) act(r *Rule) {
	switch r.Action {
	case BlackholeConn:
		l.blackhole()
	default:
		l.close(true)
	}
}
