package dispatch

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The verification examples of docs/receiving.md (Go, Node.js, Python) are
// what integrators copy: each one runs here as a server, unchanged but for
// the port it listens on, and must accept what walhook sends (one key, and
// during a secret rotation) and refuse a changed body, an old timestamp
// and another secret. Node.js and Python are looked up on PATH; CI
// installs them (.ci/run sets WALHOOK_CI, and then a missing one fails).
func TestReceivingDocExamples(t *testing.T) {
	t.Parallel()
	md, err := os.ReadFile(filepath.Join("..", "docs", "receiving.md"))
	if err != nil {
		t.Fatal(err)
	}
	secret, other := NewSecret(), NewSecret()

	t.Run("go", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		src := fencedBlock(t, md, "go", "package receiver")
		write(t, filepath.Join(dir, "go.mod"), "module example\n\ngo 1.22\n")
		write(t, filepath.Join(dir, "receiver", "receiver.go"), src)
		write(t, filepath.Join(dir, "main.go"), `package main

import (
	"fmt"
	"net"
	"net/http"
	"os"

	"example/receiver"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	http.Serve(ln, receiver.Handler(os.Getenv("WEBHOOK_SECRET"), func(string, []byte) error { return nil }))
}
`)
		bin := filepath.Join(dir, "example")
		build := exec.Command("go", "build", "-o", bin, ".")
		build.Dir = dir
		build.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("the Go example does not build: %v\n%s", err, out)
		}
		checkExample(t, startExample(t, secret, bin), secret, other)
	})

	t.Run("node", func(t *testing.T) {
		t.Parallel()
		node := interpreter(t, "node")
		src := fencedBlock(t, md, "js", "function verify(")
		const listen = ".listen(3000);"
		if !strings.Contains(src, listen) {
			t.Fatalf("the Node.js example no longer ends in %q; update this test", listen)
		}
		src = strings.Replace(src, listen,
			`.listen(0, "127.0.0.1", function () { console.log(this.address().port); });`, 1)
		file := filepath.Join(t.TempDir(), "receiver.js")
		write(t, file, src)
		checkExample(t, startExample(t, secret, node, file), secret, other)
	})

	t.Run("python", func(t *testing.T) {
		t.Parallel()
		py := interpreter(t, "python3")
		src := fencedBlock(t, md, "python", "def verify(")
		file := filepath.Join(t.TempDir(), "receiver.py")
		write(t, file, src+`
import http.server, os

SECRET = os.environ["WEBHOOK_SECRET"]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            verify(SECRET, self.headers, body)
        except ValueError as e:
            self.send_response(401)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
`)
		checkExample(t, startExample(t, secret, py, file), secret, other)
	})
}

// checkExample sends the example server at url what walhook sends, and
// what it must refuse.
func checkExample(t *testing.T, url, secret, other string) {
	t.Helper()
	ctx := context.Background()
	client, err := NewClient(ClientOptions{Allow: []string{"127.0.0.1"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	key, otherKey := mustKey(t, secret), mustKey(t, other)
	body := []byte(`{"event":"problem.created","timestamp":"2026-01-02T03:04:05.000Z","webhook_id":"6f1c1c4e-2b4a-8c1d-9e2f-0123456789ab","auction_id":null,"data":{"title":"ü \"quoted\"\n"}}`)
	send := func(name string, keys [][]byte, want int) {
		t.Helper()
		res := client.Send(ctx, Request{URL: url, ID: "6f1c1c4e-2b4a-8c1d-9e2f-0123456789ab", Event: "problem.created", Body: body, Keys: keys})
		if res.StatusCode != want {
			t.Errorf("%s: status %d (%v, %q), want %d", name, res.StatusCode, res.Err, res.Body, want)
		}
	}
	send("walhook's request", [][]byte{key}, http.StatusNoContent)
	send("during a rotation (new and old signature)", [][]byte{otherKey, key}, http.StatusNoContent)
	send("another secret", [][]byte{otherKey}, http.StatusUnauthorized)

	// Requests walhook would not send: built by hand from its headers.
	raw := func(name string, ts int64, sent []byte, want int) {
		t.Helper()
		id := "6f1c1c4e-2b4a-8c1d-9e2f-0123456789ab"
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(sent))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		SetHeaders(req.Header, id, "problem.created", ts, Sign([][]byte{key}, id, ts, body), "walhook-test")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", name, resp.StatusCode, want)
		}
	}
	now := time.Now().Unix()
	raw("the signed request by hand", now, body, http.StatusNoContent)
	raw("a changed body", now, bytes.Replace(body, []byte("problem.created"), []byte("problem.deleted"), 1), http.StatusUnauthorized)
	raw("a timestamp 10 minutes old", now-600, body, http.StatusUnauthorized)
	raw("a timestamp 10 minutes ahead", now+600, body, http.StatusUnauthorized)
}

// startExample runs an example server with WEBHOOK_SECRET set and returns
// its URL; the server prints its port as its first line.
func startExample(t *testing.T, secret string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "WEBHOOK_SECRET="+secret)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	port := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		port <- strings.TrimSpace(line)
	}()
	select {
	case p := <-port:
		if _, err := strconv.Atoi(p); err != nil {
			t.Fatalf("%s printed %q, not a port; stderr:\n%s", name, p, stderr.String())
		}
		return fmt.Sprintf("http://127.0.0.1:%s/webhooks/walhook", p)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start within 30s; stderr:\n%s", name, stderr.String())
	}
	return ""
}

// fencedBlock returns the first ```lang block of md that contains marker.
func fencedBlock(t *testing.T, md []byte, lang, marker string) string {
	t.Helper()
	open := "```" + lang + "\n"
	for rest := string(md); ; {
		i := strings.Index(rest, open)
		if i < 0 {
			t.Fatalf("the doc has no ```%s block containing %q", lang, marker)
		}
		rest = rest[i+len(open):]
		end := strings.Index(rest, "\n```")
		if end < 0 {
			t.Fatalf("the doc has an unterminated ```%s block", lang)
		}
		if block := rest[:end+1]; strings.Contains(block, marker) {
			return block
		}
		rest = rest[end:]
	}
}

// interpreter finds name on PATH; without it the example is not checked
// (a failure under CI, where .ci/run installs it).
func interpreter(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("WALHOOK_CI") != "" {
		t.Fatalf("%s is not on PATH: .ci/run should have installed it", name)
	}
	t.Skipf("%s is not on PATH: the %s example of docs/receiving.md is not checked here (CI checks it)", name, name)
	return ""
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
