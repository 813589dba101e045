package api_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/internal/syncbuf"
)

// A store outage seen through /readyz, which a kubelet (or a load
// balancer) asks every few seconds on every replica: the cause is logged
// when it begins and then at most once a minute with the count held back
// (more_since_last_line), not at every probe, and its end once.
func TestReadyzLogsAnOutageOnce(t *testing.T) {
	t.Parallel()
	var ready, readOnly atomic.Bool
	var buf syncbuf.Buffer
	s := newStack(t, stackConfig{api: func(o *api.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&buf, nil))
		o.Ready = func(ctx context.Context) error {
			if readOnly.Load() {
				return errors.New("the store is read-only")
			}
			if !ready.Load() {
				return errors.New("dial tcp 10.1.2.3:5432: connect: connection refused")
			}
			return nil
		}
	}})
	for range 10 {
		s.do(t, "", "GET", "/readyz", nil).fails(t, http.StatusServiceUnavailable, "not_ready")
	}
	if n := strings.Count(buf.String(), `msg="not ready"`); n != 1 {
		t.Errorf("10 probes during one outage logged %d 'not ready' lines, want 1:\n%s", n, buf.String())
	}
	// The store answers again but read-only: the new cause is logged at
	// once, then held back like the first.
	readOnly.Store(true)
	for range 5 {
		s.do(t, "", "GET", "/readyz", nil).fails(t, http.StatusServiceUnavailable, "not_ready")
	}
	if n := strings.Count(buf.String(), "the store is read-only"); n != 1 {
		t.Errorf("a new cause of the outage was logged %d times, want 1:\n%s", n, buf.String())
	}
	readOnly.Store(false)
	ready.Store(true)
	for range 3 {
		s.do(t, "", "GET", "/readyz", nil).ok(t, http.StatusOK, nil)
	}
	if n := strings.Count(buf.String(), `msg="ready again"`); n != 1 {
		t.Errorf("the outage's end logged %d 'ready again' lines, want 1:\n%s", n, buf.String())
	}
	ready.Store(false)
	s.do(t, "", "GET", "/readyz", nil).fails(t, http.StatusServiceUnavailable, "not_ready")
	if n := strings.Count(buf.String(), `msg="not ready"`); n != 3 {
		t.Errorf("a second outage logged %d 'not ready' lines in all, want 3 (its start is logged at once)", n)
	}
}

// A cause whose text differs from probe to probe only in its numbers (the
// local port of a reset connection, a measured delay) is the same cause:
// logged once, not at every probe.
func TestReadyzCauseWithChangingNumbersLoggedOnce(t *testing.T) {
	t.Parallel()
	var probe atomic.Int64
	var buf syncbuf.Buffer
	s := newStack(t, stackConfig{api: func(o *api.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&buf, nil))
		o.Ready = func(ctx context.Context) error {
			n := probe.Add(1)
			return fmt.Errorf("read tcp 10.0.0.7:%d->10.1.2.3:5432: read: connection reset by peer (after %d.%03ds)", 40000+n, n, 7*n)
		}
	}})
	for range 10 {
		s.do(t, "", "GET", "/readyz", nil).fails(t, http.StatusServiceUnavailable, "not_ready")
	}
	if n := strings.Count(buf.String(), `msg="not ready"`); n != 1 {
		t.Errorf("10 probes with one cause whose port changes logged %d 'not ready' lines, want 1:\n%s", n, buf.String())
	}
}
