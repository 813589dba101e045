package api_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/dispatch"
)

// A store that refuses connections (down, restarting) answers 503
// store_unavailable with Retry-After, as docs/api.md says, not 500
// internal: the request changed nothing, and trying again later is the
// client's right move.
func TestStoreDownAnswers503(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: every connect is refused
	dead, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://walhook@%s/walhook?connect_timeout=2&sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dead.Close)
	d, err := dispatch.New(dead, dispatch.Options{Schema: "walhook"}) // never run: it only checks URLs here
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, stackConfig{noRun: true, api: func(o *api.Options) { o.Admin = dispatch.NewAdmin(dead, "walhook", d) }})
	const id = "whk_0123456789abcdef"
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/api/v1/webhooks", nil},
		{"GET", "/api/v1/webhooks/" + id, nil},
		{"PUT", "/api/v1/webhooks/" + id, `{"description":"x"}`},
		{"GET", "/api/v1/webhooks/" + id + "/deliveries", nil},
		{"POST", "/api/v1/webhooks/create", `{"url":"https://hooks.example.com/x","events":["auction.bid"]}`},
	} {
		r := s.call(t, c.method, c.path, c.body)
		if r.Status != http.StatusServiceUnavailable || r.Error == nil || r.Error.Code != api.CodeStoreUnavailable ||
			r.Header.Get("Retry-After") == "" || strings.Contains(r.Error.Message, addr) {
			t.Errorf("%s %s with the store down: %d %s, want 503 %s with Retry-After and no address", c.method, c.path, r.Status, r.Raw, api.CodeStoreUnavailable)
		}
	}
}
