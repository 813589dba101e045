// Package receiver is a webhook receiver that does what PRODUCT.md asks of
// receivers: it verifies every request with the Standard Webhooks library
// (the same check any receiver would run), de-duplicates by webhook-id and
// acknowledges with 2xx. It is used by `walhook demo`, `walhook receive`
// (docker-compose's sample receiver), the benchmark and end-to-end tests.
package receiver

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/walhook/walhook/dispatch"
)

// Delivery is one verified request.
type Delivery struct {
	ID        string // webhook-id
	Event     string // X-Webhook-Event
	Body      []byte
	Header    http.Header
	Duplicate bool // an id seen before (a retry or a replay)
	At        time.Time
}

// Receiver verifies, de-duplicates and records deliveries.
type Receiver struct {
	verifiers []*standardwebhooks.Webhook
	// OnDelivery, when set, is called for every verified request (also
	// duplicates), outside the lock.
	OnDelivery func(Delivery)
	// Status, when set, decides the response code for a verified request
	// (default 204).
	Status func(Delivery) int
	// OnReject, when set, is called for every request refused with 401:
	// the webhook-id it claimed and why.
	OnReject func(id, reason string)
	// Forget, when positive, drops an id not received again for this
	// long, so a receiver that runs for days (`walhook receive`) does not
	// keep every id it ever saw: an id received after that counts as new
	// again. Zero keeps every id (tests and the benchmark count them all).
	Forget time.Duration

	mu       sync.Mutex
	seen     map[string]int       // id → times received
	seenAt   map[string]time.Time // id → last received, with Forget
	pruned   time.Time            // last pass over seenAt
	byEvent  map[string]int       // unique ids per event type
	bodies   map[string][]byte
	rejected int
	keep     bool
}

// New returns a receiver that accepts requests signed by any of secrets
// ("whsec_…"). keepBodies keeps each unique body for inspection (tests).
func New(keepBodies bool, secrets ...string) (*Receiver, error) {
	r := &Receiver{seen: map[string]int{}, byEvent: map[string]int{}, bodies: map[string][]byte{}, keep: keepBodies}
	for i, s := range secrets {
		// walhook's own check first: its message says what a secret
		// looks like, where the library's says only what failed.
		if _, err := dispatch.DecodeSecret(s); err != nil {
			return nil, fmt.Errorf("receiver secret %d of %d: %w", i+1, len(secrets), err)
		}
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			return nil, fmt.Errorf("receiver secret %d of %d: %w", i+1, len(secrets), err)
		}
		r.verifiers = append(r.verifiers, wh)
	}
	if len(r.verifiers) == 0 {
		return nil, fmt.Errorf("receiver: no secret")
	}
	return r, nil
}

func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	verified := false
	var verr error
	for _, v := range r.verifiers {
		if err := v.Verify(body, req.Header); err == nil {
			verified = true
			break
		} else if verr == nil {
			verr = err
		}
	}
	if !verified || !json.Valid(body) {
		r.mu.Lock()
		r.rejected++
		r.mu.Unlock()
		if r.OnReject != nil {
			reason := "the body is not JSON"
			if !verified {
				reason = fmt.Sprintf("no secret verifies it (%v): a wrong secret, a rotation overlap that ended, a changed body or a clock too far off", verr)
			}
			r.OnReject(req.Header.Get("webhook-id"), reason)
		}
		http.Error(w, "signature verification failed", http.StatusUnauthorized)
		return
	}
	d := Delivery{ID: req.Header.Get("webhook-id"), Event: req.Header.Get("X-Webhook-Event"), Body: body,
		Header: req.Header.Clone(), At: time.Now()}
	r.mu.Lock()
	r.forget(d.At)
	r.seen[d.ID]++
	d.Duplicate = r.seen[d.ID] > 1
	if r.seenAt != nil {
		r.seenAt[d.ID] = d.At
	}
	if !d.Duplicate {
		r.byEvent[d.Event]++
		if r.keep {
			r.bodies[d.ID] = body
		}
	}
	r.mu.Unlock()
	if r.OnDelivery != nil {
		r.OnDelivery(d)
	}
	code := http.StatusNoContent
	if r.Status != nil {
		code = r.Status(d)
	}
	w.WriteHeader(code)
}

// forget drops, with Forget set, the ids last received longer than Forget
// ago, in at most one pass per quarter of Forget. The caller holds r.mu.
func (r *Receiver) forget(now time.Time) {
	if r.Forget <= 0 {
		return
	}
	if r.seenAt == nil {
		r.seenAt = map[string]time.Time{}
	}
	if now.Sub(r.pruned) >= r.Forget/4 {
		for id, at := range r.seenAt {
			if now.Sub(at) > r.Forget {
				delete(r.seenAt, id)
				delete(r.seen, id)
				delete(r.bodies, id)
			}
		}
		r.pruned = now
	}
}

// Unique returns the number of distinct delivery ids received (with
// Forget, of those not forgotten).
func (r *Receiver) Unique() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// Counts returns unique deliveries per event type.
func (r *Receiver) Counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.byEvent))
	for k, v := range r.byEvent {
		out[k] = v
	}
	return out
}

// Duplicates returns how many requests repeated an id already received.
func (r *Receiver) Duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.seen {
		n += c - 1
	}
	return n
}

// Rejected returns how many requests failed verification.
func (r *Receiver) Rejected() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rejected
}

// Bodies returns the unique bodies by id (only when created with keepBodies).
func (r *Receiver) Bodies() map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]byte, len(r.bodies))
	for k, v := range r.bodies {
		out[k] = v
	}
	return out
}

// Line renders a delivery as one readable line for people watching.
func Line(d Delivery) string {
	var env struct {
		AuctionID  string `json:"auction_id"`
		AuctionID2 string `json:"auctionId"`
	}
	_ = json.Unmarshal(d.Body, &env)
	auction := env.AuctionID
	if auction == "" {
		auction = env.AuctionID2
	}
	dup := ""
	if d.Duplicate {
		dup = "  (duplicate, ignored)"
	}
	return fmt.Sprintf("✓ verified  %-26s id=%s auction=%s %dB%s", d.Event, d.ID, auction, len(d.Body), dup)
}
