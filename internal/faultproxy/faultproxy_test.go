package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echo starts a line echo server and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends line and reads it back within d.
func roundTrip(c net.Conn, r *bufio.Reader, line string, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return err
	}
	_, err := r.ReadString('\n')
	return err
}

func TestProxyFaults(t *testing.T) {
	p, err := Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	c, r := dial(t, p)
	if err := roundTrip(c, r, "hello", 2*time.Second); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	if n := p.ResetAll(); n != 1 {
		t.Fatalf("ResetAll reset %d connections, want 1", n)
	}
	if err := roundTrip(c, r, "after reset", 2*time.Second); err == nil {
		t.Fatal("a reset connection still answers")
	}

	c, r = dial(t, p)
	p.Stall(500 * time.Millisecond)
	start := time.Now()
	if err := roundTrip(c, r, "stalled", 3*time.Second); err != nil || time.Since(start) < 400*time.Millisecond {
		t.Fatalf("a stalled link answered after %s (%v); want after the stall", time.Since(start), err)
	}

	p.Blackhole()
	if err := roundTrip(c, r, "holed", 300*time.Millisecond); err == nil {
		t.Fatal("a blackholed connection answers")
	}
	c2, r2 := dial(t, p)
	if err := roundTrip(c2, r2, "new", 2*time.Second); err != nil {
		t.Fatalf("a new connection after Blackhole: %v", err)
	}

	rule := p.AddRule(&Rule{Match: []byte("cut me"), After: 3})
	c3, r3 := dial(t, p)
	_ = c3.SetDeadline(time.Now().Add(2 * time.Second))
	_, _ = c3.Write([]byte("cut me\n"))
	got, err := io.ReadAll(r3)
	if rule.Fired() != 1 || string(got) != "cut" || err == nil {
		t.Fatalf("rule cut after 3 bytes: fired %d, read %q, %v", rule.Fired(), got, err)
	}

	p.Refuse(time.Hour)
	c4, r4 := dial(t, p)
	if err := roundTrip(c4, r4, "refused", 2*time.Second); err == nil {
		t.Fatal("a refused connection answers")
	}
}
