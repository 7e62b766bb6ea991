package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// An index whose platform entry names a digest of an algorithm this
// build cannot compute (blake3) or none at all, from an upstream that
// answers 200 to whatever is asked (a captive portal, a hostile
// upstream): the background fill fetched that child and hashed its body
// with the algorithm, which panicked and took the whole mirror down. The
// fill now fails on the digest, as it does on a blob's, and the index
// stays partial.
func TestIndexChildWithUnusableDigestDoesNotCrash(t *testing.T) {
	for _, child := range []string{"blake3:" + strings.Repeat("a", 64), "nocolon"} {
		t.Run(child, func(t *testing.T) {
			index := []byte(`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIIndex + `","manifests":[{"mediaType":"` + oci.MediaTypeOCIManifest +
				`","digest":"` + child + `","size":10,"platform":{"os":"linux","architecture":"amd64"}}]}`)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				w.Header().Set("Content-Type", oci.MediaTypeOCIIndex)
				_, _ = w.Write(index)
			}))
			defer srv.Close()
			p, _, ix := testMirror(t, nil, srv.URL)
			rec := httptest.NewRecorder()
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
			req.Header.Set("Accept", oci.Accept)
			p.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("GET v1: %d %s; want 200", rec.Code, rec.Body)
			}
			if err := p.WaitIdle(t.Context()); err != nil {
				t.Fatal(err)
			}
			f, ok, err := ix.Fill(DefaultHost, "library/app", digest.FromBytes(index))
			if err != nil || !ok || f.State != storage.FillPartial {
				t.Errorf("fill of the index: %+v %v %v; want partial", f, ok, err)
			}
		})
	}
}

// A client that cannot read an index gets its linux/amd64 image: when the
// upstream's index names that image by a digest of an unregistered
// algorithm, the client was answered 400 DIGEST_INVALID, blaming the tag
// it asked for. It is the upstream's bad answer: 502 UNAVAILABLE.
func TestIndexDefaultPlatformWithUnusableDigestIsBadGateway(t *testing.T) {
	index := []byte(`{"schemaVersion":2,"mediaType":"` + oci.MediaTypeOCIIndex + `","manifests":[{"mediaType":"` + oci.MediaTypeOCIManifest +
		`","digest":"blake3:` + strings.Repeat("a", 64) + `","size":10,"platform":{"os":"linux","architecture":"amd64"}}]}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/library/app/manifests/v1" {
			w.Header().Set("Content-Type", oci.MediaTypeOCIIndex)
			_, _ = w.Write(index)
		}
	}))
	defer srv.Close()
	p, _, _ := testMirror(t, nil, srv.URL)
	rec := httptest.NewRecorder()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
	req.Header.Set("Accept", oci.MediaTypeDockerManifest)
	p.Handler().ServeHTTP(rec, req)
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), `"UNAVAILABLE"`) {
		t.Errorf("GET v1 (no index accepted): %d %s; want 502 UNAVAILABLE", rec.Code, rec.Body)
	}
}
