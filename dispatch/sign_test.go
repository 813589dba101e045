package dispatch

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func mustKey(t testing.TB, secret string) []byte {
	t.Helper()
	k, err := DecodeSecret(secret)
	if err != nil {
		t.Fatalf("DecodeSecret: %v", err)
	}
	return k
}

func mustVerifier(t testing.TB, secret string) *standardwebhooks.Webhook {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatalf("standardwebhooks.NewWebhook: %v", err)
	}
	return wh
}

// The Standard Webhooks specification's own test vector.
func TestSignKnownAnswer(t *testing.T) {
	t.Parallel()
	key := mustKey(t, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	got := Sign([][]byte{key}, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	if got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
}

// Our headers and signature, verified by the Standard Webhooks Go library
// unchanged (with its timestamp tolerance, so the timestamp is now).
func TestSignVerifiedByStandardWebhooks(t *testing.T) {
	t.Parallel()
	s1, s2, s3 := NewSecret(), NewSecret(), NewSecret()
	body := []byte(`{"event":"problem.created","timestamp":"2026-01-02T03:04:05.000Z","webhook_id":"0b7c","auction_id":null,"data":{"x":"ü\n"}}`)
	id := "6f1c1c4e-2b4a-8c1d-9e2f-0123456789ab"
	ts := time.Now().Unix()

	t.Run("one key", func(t *testing.T) {
		h := http.Header{}
		SetHeaders(h, id, "problem.created", ts, Sign([][]byte{mustKey(t, s1)}, id, ts, body), "ua/1")
		if err := mustVerifier(t, s1).Verify(body, h); err != nil {
			t.Fatalf("verify: %v", err)
		}
		if err := mustVerifier(t, s2).Verify(body, h); err == nil {
			t.Fatal("a different secret verified")
		}
		tampered := bytes.Replace(body, []byte("created"), []byte("deleted"), 1)
		if err := mustVerifier(t, s1).Verify(tampered, h); err == nil {
			t.Fatal("a tampered body verified")
		}
	})

	t.Run("two keys during rotation", func(t *testing.T) {
		sig := Sign([][]byte{mustKey(t, s1), mustKey(t, s2)}, id, ts, body)
		if n := len(strings.Split(sig, " ")); n != 2 {
			t.Fatalf("signature %q has %d parts, want 2", sig, n)
		}
		h := http.Header{}
		SetHeaders(h, id, "problem.created", ts, sig, "ua/1")
		for i, s := range []string{s1, s2} {
			if err := mustVerifier(t, s).Verify(body, h); err != nil {
				t.Errorf("secret %d: verify: %v", i+1, err)
			}
		}
		if err := mustVerifier(t, s3).Verify(body, h); err == nil {
			t.Fatal("an unrelated secret verified")
		}
	})
}

func TestSignNoKeys(t *testing.T) {
	t.Parallel()
	if got := Sign(nil, "id", 1, []byte("x")); got != "" {
		t.Fatalf("Sign(no keys) = %q, want empty", got)
	}
}

func TestSetHeaders(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	sig := "v1,AAAA v1,BBBB"
	SetHeaders(h, "evt_0123", "auction.created", 1700000000, sig, "AuctionExcellence-Webhook/1.0")
	want := map[string]string{
		"Content-Type":        "application/json",
		"User-Agent":          "AuctionExcellence-Webhook/1.0",
		"X-Webhook-ID":        "evt_0123",
		"X-Webhook-Timestamp": "1700000000",
		"X-Webhook-Event":     "auction.created",
		"X-Webhook-Signature": sig,
		"webhook-id":          "evt_0123",
		"webhook-timestamp":   "1700000000",
		"webhook-signature":   sig,
	}
	for k, v := range want {
		if got := h.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("header %s = %q, want exactly [%q]", k, got, v)
		}
	}
	for _, p := range [][2]string{{"X-Webhook-ID", "webhook-id"}, {"X-Webhook-Timestamp", "webhook-timestamp"}, {"X-Webhook-Signature", "webhook-signature"}} {
		if a, b := h.Get(p[0]), h.Get(p[1]); a != b {
			t.Errorf("%s %q and %s %q differ", p[0], a, p[1], b)
		}
	}
	if len(h) != len(want) {
		t.Errorf("%d headers set, want %d: %v", len(h), len(want), h)
	}

	// Set replaces: a reused header map does not accumulate signatures.
	SetHeaders(h, "evt_0123", "auction.created", 1700000001, "v1,CCCC", "")
	if got := h.Values("webhook-signature"); len(got) != 1 || got[0] != "v1,CCCC" {
		t.Errorf("after a second SetHeaders webhook-signature = %q", got)
	}
	if got := h.Get("User-Agent"); got != "AuctionExcellence-Webhook/1.0" {
		t.Errorf("empty user agent changed User-Agent to %q", got)
	}
}

func TestNewSecret(t *testing.T) {
	t.Parallel()
	a, b := NewSecret(), NewSecret()
	if a == b {
		t.Fatal("two secrets are equal")
	}
	for _, s := range []string{a, b} {
		rest, ok := strings.CutPrefix(s, "whsec_")
		if !ok {
			t.Fatalf("secret %q lacks whsec_", s)
		}
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil || len(raw) != 32 {
			t.Fatalf("secret body decodes to %d bytes, err %v; want 32 bytes", len(raw), err)
		}
		key, err := DecodeSecret(s)
		if err != nil || !bytes.Equal(key, raw) {
			t.Fatalf("DecodeSecret(NewSecret()) = %x, %v", key, err)
		}
	}
}

func TestDecodeSecretErrors(t *testing.T) {
	t.Parallel()
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, n)) }
	tests := []struct {
		name, secret, want string
	}{
		{"empty", "", "empty"},
		{"no prefix", b64(32), `must start with "whsec_"`},
		{"wrong prefix", "whsk_" + b64(32), `must start with "whsec_"`},
		{"prefix only", "whsec_", "key is 0 bytes"},
		{"not base64", "whsec_not*base64!!", "not standard base64"},
		{"url-safe alphabet", "whsec_" + strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xff}, 16))), "URL-safe base64 (- and _); use standard base64"},
		{"too short", "whsec_" + b64(16), "key is 16 bytes, want 24 to 64"},
		{"too long", "whsec_" + b64(65), "key is 65 bytes, want 24 to 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeSecret(tt.secret)
			if !errors.Is(err, ErrBadSecret) {
				t.Fatalf("err = %v, want ErrBadSecret", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tt.want)
			}
			if body := strings.TrimPrefix(tt.secret, "whsec_"); len(body) > 4 && strings.Contains(err.Error(), body) {
				t.Fatalf("err %q repeats the secret", err)
			}
		})
	}
	for _, n := range []int{24, 64} {
		if _, err := DecodeSecret("whsec_" + b64(n)); err != nil {
			t.Errorf("%d-byte key refused: %v", n, err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	body := bytes.Repeat([]byte(`{"k":"v"},`), 50) // 500 B
	id := "6f1c1c4e-2b4a-8c1d-9e2f-0123456789ab"
	for _, n := range []int{1, 2} {
		keys := make([][]byte, n)
		for i := range keys {
			keys[i] = mustKey(b, NewSecret())
		}
		b.Run(strconv.Itoa(n)+"key", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				_ = Sign(keys, id, 1700000000, body)
			}
		})
	}
}
