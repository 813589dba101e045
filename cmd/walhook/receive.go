package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/walhook/walhook/internal/receiver"
)

// runReceive is `walhook receive`: a sample receiver that verifies every
// request with the Standard Webhooks library, de-duplicates by webhook-id and
// prints one line per delivery. docker-compose runs it next to walhook; it is
// also handy when writing a mapping.
func runReceive(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("receive", stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "address to listen on")
	// The environment is read after parsing, not as the flag's default:
	// the help and the usage after a bad flag print defaults.
	secrets := fs.String("secret", "", "comma-separated whsec_… secrets to accept (default $WALHOOK_RECEIVER_SECRET, which keeps them out of ps)")
	bodies := fs.Bool("body", false, "print each delivery's body under its line")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	from := "--secret"
	if *secrets == "" {
		*secrets, from = os.Getenv("WALHOOK_RECEIVER_SECRET"), "$WALHOOK_RECEIVER_SECRET"
	}
	if *secrets == "" {
		return usageErrorf("receive: --secret or $WALHOOK_RECEIVER_SECRET is required")
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		return usageErrorf("receive: --listen must be host:port (e.g. 127.0.0.1:9000), got %q", *listen)
	}
	r, err := receiver.New(false, strings.Split(*secrets, ",")...)
	if err != nil {
		// Says which secret and why, never the secret itself.
		return usageErrorf("receive: %s: %v", from, err)
	}
	// It runs for days next to walhook (docker-compose): ids are kept
	// for de-duplication only as long as walhook may send one again on
	// its retry schedule, not for good.
	r.Forget = receiveForget
	var mu sync.Mutex
	r.OnDelivery = func(d receiver.Delivery) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(stdout, receiver.Line(d))
		if *bodies {
			fmt.Fprintf(stdout, "  %s\n", d.Body)
		}
	}
	// A refused request is said, or a wrong secret would look like
	// nothing arriving.
	r.OnReject = func(id, reason string) {
		mu.Lock()
		defer mu.Unlock()
		if id == "" {
			id = "(no webhook-id)"
		}
		fmt.Fprintf(stderr, "rejected %s with 401: %s\n", id, reason)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	fmt.Fprintf(stdout, "receiver listening on http://%s\n", ln.Addr())
	return serveUntilDone(ctx, &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}, ln)
}

// receiveForget is how long `walhook receive` remembers a webhook id: past
// the default retry schedule (about 15 hours from the first attempt to the
// last), with room to spare.
const receiveForget = 48 * time.Hour

// serveUntilDone serves until ctx is cancelled, then shuts down gracefully.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err := srv.Shutdown(sctx)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		return err
	}
}
