package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/walhook/walhook/internal/syncbuf"
)

// walhook receive prints a delivery's body with --body, and says on
// stderr why it refused a request: a wrong secret must not look like
// nothing arriving.
func TestReceivePrintsBodiesAndRejections(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"receive", "--listen", "127.0.0.1:0", "--secret", runSecret, "--body"}, stdout, stderr)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("receive: %v", err)
		}
	}()
	addr := regexp.MustCompile(`receiver listening on (http://\S+)`)
	runWaitFor(t, 10*time.Second, "the receiver to listen", func() bool { return addr.MatchString(stdout.String()) }, stdout.String)
	url := addr.FindStringSubmatch(stdout.String())[1]
	post := func(id, secret string) int {
		body := []byte(`{"event":"item.created","data":{"id":1}}`)
		ts := time.Now()
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		sig, _ := wh.Sign(id, ts, body)
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		req.Header.Set("webhook-id", id)
		req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
		req.Header.Set("webhook-signature", sig)
		req.Header.Set("X-Webhook-Event", "item.created")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("msg_ok", runSecret); code != http.StatusNoContent {
		t.Fatalf("signed request: %d", code)
	}
	if code := post("msg_bad", "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="); code != http.StatusUnauthorized {
		t.Fatalf("wrongly signed request: %d", code)
	}
	runWaitFor(t, 10*time.Second, "the body and the rejection", func() bool {
		return strings.Contains(stdout.String(), `  {"event":"item.created","data":{"id":1}}`) &&
			strings.Contains(stderr.String(), "rejected msg_bad with 401: no secret verifies it")
	}, func() string { return stdout.String() + stderr.String() })
}

// The receiver's secret, given in $WALHOOK_RECEIVER_SECRET to keep it out
// of ps, is not printed by the help or by the usage shown after a bad flag.
func TestReceiveHelpDoesNotPrintTheSecret(t *testing.T) {
	t.Setenv("WALHOOK_RECEIVER_SECRET", runSecret)
	for _, args := range [][]string{{"receive", "--help"}, {"receive", "--lisen", ":0"}} {
		var stdout, stderr bytes.Buffer
		err := Run(context.Background(), args, &stdout, &stderr)
		if err == nil {
			t.Fatalf("%v: no error", args)
		}
		if out := stdout.String() + stderr.String(); strings.Contains(out, strings.TrimPrefix(runSecret, "whsec_")) {
			t.Errorf("%v printed the secret:\n%s", args, out)
		}
		// The help asked for goes to stdout, the usage after a bad flag to stderr.
		if usage := stdout.String() + stderr.String(); !strings.Contains(usage, "-secret") {
			t.Errorf("%v: no usage:\n%s", args, usage)
		}
	}
}

// An address already taken is a runtime failure (exit 1) that names it.
func TestReceiveCannotListen(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	out, errOut, code := runCLI(t, context.Background(), "receive", "--secret", runSecret, "--listen", addr)
	if want := "receive: listen tcp " + addr + ": bind: address already in use"; code != 1 || !strings.Contains(errOut, want) || out != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, want)
	}
}
