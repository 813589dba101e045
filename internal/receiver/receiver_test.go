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
