package proxy

import (
	"net/http"
	"net/textproto"
	"testing"
)

// The keys setHeaders stores as they are must be canonical: Header.Get
// (and so every Go client) would not find any other.
func TestHeaderKeysCanonical(t *testing.T) {
	for _, k := range []string{headerAPIVersion, headerNoSniff, headerDigest, headerContentType,
		headerContentLength, headerETag, headerCacheControl, cacheHeader} {
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
