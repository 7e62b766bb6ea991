package proxy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
)

// emptyIndex is a manifest the bearer upstream of storageUpstream serves
// as library/app:v1: an index of nothing, which no fill follows.
const emptyIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`

// storageUpstream is a registry of bearer auth (its token server at its
// /token) that serves library/app:v1 (emptyIndex) itself and redirects
// every blob to its storage, storage's /blob.
func storageUpstream(t *testing.T, storage *httptest.Server) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			fmt.Fprint(w, `{"token":"t"}`)
		case r.Header.Get("Authorization") != "Bearer t":
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="registry"`, r.Host))
			w.WriteHeader(http.StatusUnauthorized)
		case strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, storage.URL+"/blob?X-Amz-Signature=secret", http.StatusTemporaryRedirect)
		case strings.HasSuffix(r.URL.Path, "/manifests/v1"):
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			w.Header().Set("Docker-Content-Digest", digest.FromString(emptyIndex).String())
			fmt.Fprint(w, emptyIndex)
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	t.Cleanup(up.Close)
	return up
}

// wantRateLimited fails t unless rec is a 429 TOOMANYREQUESTS with
// Retry-After retryAfter.
func wantRateLimited(t *testing.T, rec *httptest.ResponseRecorder, retryAfter, what string) {
	t.Helper()
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != retryAfter || !strings.Contains(rec.Body.String(), string(errcode.TooManyRequests)) {
		t.Fatalf("%s: %d, Retry-After %q, %s; want 429 TOOMANYREQUESTS with Retry-After %s", what, rec.Code, rec.Header().Get("Retry-After"), rec.Body, retryAfter)
	}
}

// A blob the upstream sends from its storage (a CDN), whose token server
// rate-limits the storage's token requests (429 with a Retry-After), is
// answered 429 with the seconds to wait, as the registry's own token
// server's 429 is, not 502: the storage's refusal of the request sent
// without a token is the token server's rate limit, on which clients back
// off, not a gateway failing.
func TestStorageTokenServerRateLimitIsTooManyRequests(t *testing.T) {
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusTooManyRequests)
		case r.Header.Get("Authorization") != "Bearer s":
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="storage"`, r.Host))
			w.WriteHeader(http.StatusUnauthorized)
		default:
			fmt.Fprint(w, "blob")
		}
	}))
	t.Cleanup(storage.Close)
	p, _, _ := testMirror(t, nil, storageUpstream(t, storage).URL)
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/blobs/"+digest.FromString("blob").String(), nil))
	wantRateLimited(t, rec, "60", "a blob whose storage's token server rate-limits")
}

// A 429 of the upstream's storage (a CDN answering a signed URL) holds
// back none of the registry's own requests: the registry said nothing,
// and its manifests are answered meanwhile. The blob's client is answered
// the storage's 429 with its Retry-After.
func TestStorageRateLimitDoesNotHoldBackTheRegistry(t *testing.T) {
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	t.Cleanup(storage.Close)
	p, _, _ := testMirror(t, nil, storageUpstream(t, storage).URL)
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/blobs/"+digest.FromString("blob").String(), nil))
	wantRateLimited(t, rec, "60", "a blob whose storage rate-limits")

	rec = httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != emptyIndex {
		t.Fatalf("a manifest of the registry after its storage's 429: %d %s; want 200 and the manifest", rec.Code, rec.Body)
	}
}
