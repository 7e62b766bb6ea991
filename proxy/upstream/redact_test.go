package upstream

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// An upstream error never shows a token or credentials of a URL: a blob
// redirected to a signed URL (S3, a CDN) that cannot be fetched fails
// with the URL's query and userinfo left out of the message, while the
// cause stays inspectable; an invalid upstream URL is not echoed.
func TestErrorsShowNoURLSecrets(t *testing.T) {
	const signed = "http://bot:hunter2@127.0.0.1:1/blobs/data?X-Amz-Credential=AKIAhunter2&X-Amz-Signature=hunter2"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Redirect(w, r, signed, http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	c := errClient(t, srv.URL)
	_, _, err := c.Blob(t.Context(), errTestRepo, errTestDigest, 0)
	if err == nil {
		t.Fatal("a blob from an unreachable signed URL was fetched")
	}
	msg := err.Error()
	t.Log(msg)
	if strings.Contains(msg, "hunter2") {
		t.Errorf("the error shows a secret of the redirect URL: %s", msg)
	}
	if !strings.Contains(msg, "127.0.0.1:1/blobs/data") {
		t.Errorf("the error no longer says where it failed: %s", msg)
	}
	if ue := (*url.Error)(nil); !errors.As(err, &ue) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("the cause is lost: %#v", err)
	}

	if _, err := New("ghcr.io", "https://bot:hunter2%zz@ghcr.io"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("New with an invalid URL: %v", err)
	}
}
