package dispatch

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A redirect is not followed, and its error (kept in the delivery log,
// logged, returned by the API's test send) says where it pointed without
// the Location's query, user info or fragment: a receiver redirecting
// http to https, or to a new path, echoes the endpoint URL's ?token=.
func TestSendRedirectErrorHidesLocationSecrets(t *testing.T) {
	t.Parallel()
	var loc string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusPermanentRedirect)
	}))
	defer srv.Close()
	client, err := NewClient(ClientOptions{AllowHTTP: true, Allow: []string{"127.0.0.1"}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer client.CloseIdleConnections()
	key := mustKey(t, NewSecret())
	for _, tc := range []struct{ loc, want string }{
		{"https://hooks.example/in?token=TOKSECRET", `"https://hooks.example/in?…"`},
		{"https://user:PWSECRET@hooks.example/in", `"https://hooks.example/in"`},
		{"/in?token=TOKSECRET&x=1#FRAGSECRET", `"/in?…"`},
		{"https://hooks.example/in#FRAGSECRET", `"https://hooks.example/in"`},
		{"https://hooks.example/in", `"https://hooks.example/in"`},
		{"http://[::1?token=TOKSECRET", `(not a URL)`},
		{"", `""`},
	} {
		loc = tc.loc
		res := client.Send(context.Background(), Request{URL: srv.URL + "/hook?token=TOKSECRET", ID: "msg_1",
			Event: "e.x", Body: []byte(`{}`), Keys: [][]byte{key}})
		if !errors.Is(res.Err, ErrRedirect) {
			t.Fatalf("Location %q: err = %v, want ErrRedirect", tc.loc, res.Err)
		}
		msg := res.Err.Error()
		if strings.Contains(msg, "SECRET") {
			t.Errorf("Location %q: error repeats a secret: %s", tc.loc, msg)
		}
		if !strings.Contains(msg, tc.want) {
			t.Errorf("Location %q: error %q does not name %s", tc.loc, msg, tc.want)
		}
	}
}

// An endpoint URL url.Parse refuses is described without the part it
// quotes: a password holding "/" ends the authority early, and the rest
// of it came back as an "invalid port".
func TestValidateURLErrorHidesURLParts(t *testing.T) {
	t.Parallel()
	client, err := NewClient(ClientOptions{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{
		"https://api:SECRET/rest@hooks.example/in",
		"https://hooks.example:SECRET/in",
		"https://[::1/in?token=SECRET",
	} {
		err := client.ValidateURL(raw)
		if !errors.Is(err, ErrMalformedURL) {
			t.Fatalf("%s: err = %v, want ErrMalformedURL", raw, err)
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%s: error repeats part of the URL: %v", raw, err)
		}
	}
}
