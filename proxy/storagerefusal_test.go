package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A blob the upstream sends from its storage (a signed URL), which the
// storage refuses however often the upstream signs it anew (a storage
// host whose clock is off, a bucket policy) is the upstream's gateway
// failing, answered 502 and naming the storage host: not DENIED, which
// sends the operator to check credentials the storage never got and
// which docker does not retry.
func TestStorageRefusalIsNotDenied(t *testing.T) {
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>`))
	}))
	t.Cleanup(storage.Close)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, storage.URL+"/blob?X-Amz-Signature=secret", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(up.Close)
	p, _, _ := testMirror(t, nil, up.URL)
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/blobs/"+digest.FromString("blob").String(), nil))
	storageHost := strings.TrimPrefix(storage.URL, "http://")
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), storageHost) {
		t.Fatalf("the upstream's storage refusing its signed URL: %d %s; want 502 naming %s", rec.Code, rec.Body, storageHost)
	}
}
