package receiver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func post(t *testing.T, url, id string, body []byte, sign string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	ts := time.Now()
	wh, _ := standardwebhooks.NewWebhook(sign)
	sig, err := wh.Sign(id, ts, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	req.Header.Set("X-Webhook-Event", "problem.created")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestReceiverVerifiesAndDeduplicates(t *testing.T) {
	r, err := New(true, secret)
	if err != nil {
		t.Fatal(err)
	}
	var rejected []string
	r.OnReject = func(id, reason string) { rejected = append(rejected, id+": "+reason) }
	srv := httptest.NewServer(r)
	defer srv.Close()
	body := []byte(`{"event":"problem.created","auction_id":"a1"}`)
	if got := post(t, srv.URL, "d1", body, secret); got != 204 {
		t.Fatalf("first: %d, want 204", got)
	}
	if got := post(t, srv.URL, "d1", body, secret); got != 204 {
		t.Fatalf("duplicate: %d, want 204", got)
	}
	other := "whsec_" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	if got := post(t, srv.URL, "d2", body, other); got != 401 {
		t.Fatalf("wrong secret: %d, want 401", got)
	}
	if len(rejected) != 1 || !strings.HasPrefix(rejected[0], "d2: no secret verifies it") {
		t.Errorf("rejections said: %q, want d2's", rejected)
	}
	if r.Unique() != 1 || r.Duplicates() != 1 || r.Rejected() != 1 || r.Counts()["problem.created"] != 1 {
		t.Fatalf("unique %d dup %d rejected %d counts %v", r.Unique(), r.Duplicates(), r.Rejected(), r.Counts())
	}
	if _, err := New(false, "whsec_!!!not-base64"); err == nil {
		t.Fatal("bad secret accepted")
	}
}

// A bad secret is refused with what a secret must look like, naming which
// of several is wrong.
func TestNewRefusesBadSecret(t *testing.T) {
	good := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	for _, tc := range []struct {
		secrets []string
		want    string
	}{
		{[]string{"notasecret"}, `receiver secret 1 of 1: invalid webhook secret: must start with "whsec_"`},
		{[]string{good, "whsec_!!!"}, `receiver secret 2 of 2: invalid webhook secret: the part after "whsec_" is not standard base64`},
		{nil, "receiver: no secret"},
	} {
		_, err := New(false, tc.secrets...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q) = %v, want an error containing %q", tc.secrets, err, tc.want)
		}
	}
}

// With Forget, ids not received again for that long are dropped: a
// receiver that runs for days (`walhook receive`) holds the ids of the
// last Forget, not of every delivery it ever saw.
func TestReceiverForgetsOldIDs(t *testing.T) {
	r, err := New(false, secret)
	if err != nil {
		t.Fatal(err)
	}
	r.Forget = 100 * time.Millisecond
	srv := httptest.NewServer(r)
	defer srv.Close()
	body := []byte(`{"event":"problem.created","auction_id":"a1"}`)
	for i := 0; i < 40; i++ {
		if got := post(t, srv.URL, "old"+strconv.Itoa(i), body, secret); got != 204 {
			t.Fatalf("old %d: %d, want 204", i, got)
		}
	}
	if got := post(t, srv.URL, "old0", body, secret); got != 204 || r.Duplicates() != 1 {
		t.Fatalf("a repeat within Forget: %d, %d duplicates, want 204 and 1", got, r.Duplicates())
	}
	time.Sleep(2 * r.Forget)
	if got := post(t, srv.URL, "new", body, secret); got != 204 {
		t.Fatalf("new: %d, want 204", got)
	}
	if n := r.Unique(); n != 1 {
		t.Fatalf("%d ids kept after the first 40 were quiet for twice Forget, want 1 (the new one)", n)
	}
	if r.Duplicates() != 0 {
		t.Fatalf("%d duplicates counted among the ids kept, want 0", r.Duplicates())
	}
}
