package proxy

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/oci"
)

// The keys setHeaders stores as they are must be canonical: Header.Get
// (and so every Go client) would not find any other.
func TestHeaderKeysCanonical(t *testing.T) {
	for _, k := range []string{headerAPIVersion, headerNoSniff, headerDigest, headerContentType,
		headerContentLength, headerETag, headerCacheControl, headerVary, cacheHeader} {
		if c := textproto.CanonicalMIMEHeaderKey(k); c != k {
			t.Errorf("header key %q is not canonical (%q)", k, c)
		}
	}
}

// setHeaders sets what Header.Set would, and an Add to one key leaves the
// others' values alone.
func TestSetHeaders(t *testing.T) {
	h := http.Header{}
	setHeaders(h, headerDigest, "sha256:x", headerETag, `"sha256:x"`, headerContentLength, "3")
	want := http.Header{}
	want.Set("Docker-Content-Digest", "sha256:x")
	want.Set("ETag", `"sha256:x"`)
	want.Set("Content-Length", "3")
	if len(h) != len(want) {
		t.Fatalf("set %v, want %v", h, want)
	}
	for k := range want {
		if h.Get(k) != want.Get(k) || len(h.Values(k)) != 1 {
			t.Errorf("%s = %q, want %q", k, h.Values(k), want.Get(k))
		}
	}
	h.Add(headerDigest, "more")
	if got := h.Get(headerETag); got != `"sha256:x"` {
		t.Errorf("an Add to %s changed %s to %q", headerDigest, headerETag, got)
	}
	if got := h.Values(headerDigest); len(got) != 2 || got[1] != "more" {
		t.Errorf("%s after Add = %q", headerDigest, got)
	}
}

// A tag's answer depends on the client's Accept: the index for a client
// that reads one, its linux/amd64 image for one that does not. A shared
// cache in front of the mirror (nginx's proxy_cache, a CDN), which the
// ETag and 304 answers are for, may hand an answer stored for one
// request to another only if the headers its Vary names match (RFC 9111
// 4.1): without Vary: Accept, an old client's linux/amd64 image was
// handed to a client asking for the index, whose arm64 node then pulled
// amd64. Every answer to a tag, GET or HEAD, says it varies on Accept.
func TestTagAnswerVariesOnAccept(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	platformIndex(t, reg, "library/app", "1", "linux/amd64", "linux/arm64")
	p := inProcessMirror(t, reg)
	defer p.Close()
	types := map[string]bool{}
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, accept := range []string{oci.Accept, oci.MediaTypeDockerManifest} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequestWithContext(t.Context(), method, "/v2/library/app/manifests/1", nil)
			req.Header.Set("Accept", accept)
			p.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("%s the tag, Accept %s: %d %s", method, accept, rec.Code, rec.Body)
			}
			types[rec.Header().Get("Content-Type")] = true
			if !slices.ContainsFunc(rec.Header().Values("Vary"), func(v string) bool { return strings.Contains(strings.ToLower(v), "accept") }) {
				t.Errorf("%s the tag, Accept %s: answered %s with Vary %q; want Accept named", method, accept, rec.Header().Get("Content-Type"), rec.Header().Values("Vary"))
			}
		}
	}
	if len(types) != 2 {
		t.Errorf("answers' media types %v; want the index's and the image's", types)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
}
