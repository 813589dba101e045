package dispatch

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"

	"github.com/walhook/walhook/internal/whsec"
)

// SecretPrefix starts every endpoint secret. The key is the base64-decoded
// rest, as the Standard Webhooks specification and the Svix libraries expect.
const SecretPrefix = whsec.Prefix

// secretBytes is the key length NewSecret makes; DecodeSecret accepts
// whsec.MinBytes (24) to whsec.MaxBytes (64).
const secretBytes = 32

// Header names of a webhook request (PRODUCT.md "Webhook request"). The
// lower-case webhook-* names are the Standard Webhooks ones; http.Header
// canonicalises them on Set, and HTTP header names are case-insensitive, so
// every verifier library finds them.
const (
	HeaderID                = "X-Webhook-ID"
	HeaderTimestamp         = "X-Webhook-Timestamp"
	HeaderEvent             = "X-Webhook-Event"
	HeaderSignature         = "X-Webhook-Signature"
	HeaderStandardID        = "webhook-id"
	HeaderStandardTimestamp = "webhook-timestamp"
	HeaderStandardSignature = "webhook-signature"
)

// ErrBadSecret is wrapped by every DecodeSecret error.
var ErrBadSecret = whsec.ErrBad

// NewSecret returns a fresh secret: "whsec_" + base64 (standard, padded)
// of 32 bytes from crypto/rand.
func NewSecret() string {
	var b [secretBytes]byte
	// crypto/rand.Read never returns an error on supported platforms
	// (Go 1.24+: it panics instead of returning short reads).
	_, _ = rand.Read(b[:])
	return SecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

// DecodeSecret returns the HMAC key of a "whsec_…" secret: standard,
// padded base64 of 24 to 64 bytes (the Standard Webhooks libraries refuse
// unpadded base64). It is whsec.Decode, the one rule for a secret, which
// config applies to static endpoints' secrets too. The error says what is
// wrong without repeating the secret (it must never reach a log).
func DecodeSecret(s string) ([]byte, error) { return whsec.Decode(s) }

// Sign returns the signature header value for one attempt: for each key
// "v1,<base64 HMAC-SHA256(key, id.ts.body)>", space separated, in key order.
// Several keys are used while a secret is rotated, so a receiver holding
// either the old or the new secret verifies. No keys gives "".
func Sign(keys [][]byte, id string, ts int64, body []byte) string {
	if len(keys) == 0 {
		return ""
	}
	// The signed content is built once and shared by every key.
	msg := make([]byte, 0, len(id)+len(body)+22)
	msg = append(msg, id...)
	msg = append(msg, '.')
	msg = strconv.AppendInt(msg, ts, 10)
	msg = append(msg, '.')
	msg = append(msg, body...)

	const sigLen = 3 + 44 // "v1," + base64 of 32 bytes
	out := make([]byte, 0, len(keys)*(sigLen+1))
	var sum [sha256.Size]byte
	var enc [44]byte
	for i, k := range keys {
		if i > 0 {
			out = append(out, ' ')
		}
		m := hmac.New(sha256.New, k)
		m.Write(msg)
		base64.StdEncoding.Encode(enc[:], m.Sum(sum[:0]))
		out = append(out, "v1,"...)
		out = append(out, enc[:]...)
	}
	return string(out)
}

// SetHeaders sets the headers of a webhook request. The webhook-* headers
// are byte-identical copies of the X-Webhook-* ones so Standard Webhooks and
// Svix verifiers work unchanged. An empty userAgent leaves User-Agent as is.
func SetHeaders(h http.Header, id, event string, ts int64, sig, userAgent string) {
	t := strconv.FormatInt(ts, 10)
	h.Set("Content-Type", "application/json")
	if userAgent != "" {
		h.Set("User-Agent", userAgent)
	}
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, t)
	h.Set(HeaderEvent, event)
	h.Set(HeaderSignature, sig)
	h.Set(HeaderStandardID, id)
	h.Set(HeaderStandardTimestamp, t)
	h.Set(HeaderStandardSignature, sig)
}
