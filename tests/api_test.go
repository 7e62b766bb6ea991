package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The version check answers at /v2/, and at /v2 as distribution (a
// redirect to /v2/) and go-containerregistry's registry answer it.
func TestBaseEndpoint(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	for _, path := range []string{"/v2/", "/v2"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := do(t, method, m.URL()+path, nil)
			if r.status != http.StatusOK || r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Errorf("%s %s: %d %v %s", method, path, r.status, r.header, r.body)
			}
		}
	}
}

// Range and HEAD answers for a blob, cached and not.
func TestBlobRangeAndHead(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/rng", "1", 1, 64<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	url := m.URL() + "/v2/rng/blobs/" + layer

	// HEAD of an uncached blob asks the upstream and stores nothing.
	h := do(t, http.MethodHead, url, nil)
	if h.status != http.StatusOK || h.header.Get("Docker-Content-Digest") != layer || h.header.Get("Content-Length") == "" {
		t.Fatalf("HEAD miss: %d %v", h.status, h.header)
	}
	size, _ := strconv.ParseInt(h.header.Get("Content-Length"), 10, 64)
	if blobGets(up, layer) != 0 {
		t.Fatal("HEAD downloaded the blob")
	}

	// A Range request on a miss is answered from the download.
	missRange := do(t, http.MethodGet, url, map[string]string{"Range": "bytes=10-19"})
	if missRange.status != http.StatusPartialContent || len(missRange.body) != 10 {
		t.Fatalf("range on a miss: %d, %d bytes", missRange.status, len(missRange.body))
	}
	m.WaitIdle()
	full := get(t, url)
	if full.status != http.StatusOK || int64(len(full.body)) != size || sha(full.body) != layer {
		t.Fatalf("GET: %d, %d bytes", full.status, len(full.body))
	}
	// The range client's download went on after it left
	// (TestSequentialRangesOnAMissFetchTheBlobOnce); the hits below need
	// it recorded.
	m.WaitIdle()
	if string(missRange.body) != string(full.body[10:20]) {
		t.Fatal("range on a miss returned the wrong bytes")
	}

	cases := []struct {
		rng          string
		status       int
		start, end   int64 // inclusive, for 206
		contentRange string
	}{
		{"bytes=0-99", 206, 0, 99, fmt.Sprintf("bytes 0-99/%d", size)},
		{"bytes=100-", 206, 100, size - 1, fmt.Sprintf("bytes 100-%d/%d", size-1, size)},
		{"bytes=-50", 206, size - 50, size - 1, fmt.Sprintf("bytes %d-%d/%d", size-50, size-1, size)},
		{fmt.Sprintf("bytes=%d-%d", size-10, size+100), 206, size - 10, size - 1, fmt.Sprintf("bytes %d-%d/%d", size-10, size-1, size)},
		{fmt.Sprintf("bytes=%d-", size), 416, 0, 0, fmt.Sprintf("bytes */%d", size)},
		{"bytes=500-0", 416, 0, 0, fmt.Sprintf("bytes */%d", size)},
		{"bytes=0-1,5-6", 200, 0, size - 1, ""}, // several ranges: the whole blob
		{"pages=1-2", 200, 0, size - 1, ""},     // not bytes: ignored
	}
	for _, c := range cases {
		t.Run(c.rng, func(t *testing.T) {
			r := do(t, http.MethodGet, url, map[string]string{"Range": c.rng})
			if r.status != c.status {
				t.Fatalf("status %d, want %d", r.status, c.status)
			}
			if got := r.header.Get("Content-Range"); got != c.contentRange {
				t.Errorf("Content-Range %q, want %q", got, c.contentRange)
			}
			if c.status == 416 {
				wantError(t, r, 416, "RANGE_INVALID")
				return
			}
			if string(r.body) != string(full.body[c.start:c.end+1]) {
				t.Errorf("wrong bytes for %s", c.rng)
			}
			if r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
				t.Errorf("Content-Length %q for %d bytes", r.header.Get("Content-Length"), len(r.body))
			}
		})
	}

	hit := do(t, http.MethodHead, url, nil)
	if hit.status != http.StatusOK || hit.header.Get("Content-Length") != strconv.FormatInt(size, 10) || len(hit.body) != 0 || hit.header.Get("X-Cache") != "hit" {
		t.Fatalf("HEAD hit: %d %v", hit.status, hit.header)
	}
	mh := do(t, http.MethodHead, m.URL()+"/v2/rng/manifests/1", map[string]string{"Accept": manifestAccept})
	if mh.status != http.StatusOK || mh.header.Get("Content-Length") != strconv.Itoa(len(img.Manifest)) ||
		mh.header.Get("Docker-Content-Digest") != img.Digest || mh.header.Get("Content-Type") != img.MediaType {
		t.Fatalf("manifest HEAD: %d %v", mh.status, mh.header)
	}
}

// Every error case answers the OCI error body with the right code and
// status; writes are refused.
func TestErrors(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/err", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	missing := "sha256:" + fmt.Sprintf("%064d", 0)
	cases := []struct {
		name, method, path string
		status             int
		code               string
		asks               bool // the upstream must be asked
	}{
		{"unknown tag", "GET", "/v2/err/manifests/nope", 404, "MANIFEST_UNKNOWN", true},
		{"unknown manifest digest", "GET", "/v2/err/manifests/" + missing, 404, "MANIFEST_UNKNOWN", true},
		{"unknown blob", "GET", "/v2/err/blobs/" + missing, 404, "BLOB_UNKNOWN", true},
		{"unknown repository tags", "GET", "/v2/nosuchrepo/tags/list", 404, "NAME_UNKNOWN", true},
		{"invalid name", "GET", "/v2/Bad_Name!/manifests/1", 400, "NAME_INVALID", false},
		{"invalid tag", "GET", "/v2/err/manifests/-bad", 400, "TAG_INVALID", false},
		{"invalid manifest digest", "GET", "/v2/err/manifests/sha256:xyz", 400, "DIGEST_INVALID", false},
		{"invalid blob digest", "GET", "/v2/err/blobs/sha256:1234", 400, "DIGEST_INVALID", false},
		{"bad page size", "GET", "/v2/err/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID", false},
		{"unconfigured upstream host", "GET", "/v2/evil.example.com/x/manifests/1", 404, "NAME_UNKNOWN", false},
		{"unconfigured ns", "GET", "/v2/x/manifests/1?ns=evil.example.com", 404, "NAME_UNKNOWN", false},
		{"blob upload", "POST", "/v2/err/blobs/uploads/", 405, "UNSUPPORTED", false},
		{"manifest push", "PUT", "/v2/err/manifests/1", 405, "UNSUPPORTED", false},
		{"manifest delete", "DELETE", "/v2/err/manifests/" + img.Digest, 405, "UNSUPPORTED", false},
		{"blob delete", "DELETE", "/v2/err/blobs/" + img.Layers[0], 405, "UNSUPPORTED", false},
		{"patch", "PATCH", "/v2/err/blobs/uploads/x", 405, "UNSUPPORTED", false},
		{"catalog bad page size", "GET", "/v2/_catalog?n=-1", 400, "PAGINATION_NUMBER_INVALID", false},
		// The route is the path's last two segments; the name is all before.
		{"name that is a route's word", "GET", "/v2/blobs/manifests/nope", 404, "MANIFEST_UNKNOWN", true},
		{"no such endpoint", "GET", "/v2/err/tags/other", 404, "NAME_UNKNOWN", false},
		{"no such method", "OPTIONS", "/v2/err/manifests/1", 405, "UNSUPPORTED", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(up.Requests())
			wantError(t, do(t, c.method, m.URL()+c.path, nil), c.status, c.code)
			asked := up.Requests()[before:]
			// What is unknown here only the upstream can say; the rest is
			// answered without it.
			want := "/v2/library/" + strings.TrimPrefix(c.path, "/v2/")
			switch {
			case c.asks && !slices.ContainsFunc(asked, func(r fixture.RequestRecord) bool { return r.Path == want }):
				t.Errorf("the upstream was not asked for %s (asked: %v)", want, asked)
			case !c.asks && len(asked) > 0:
				t.Errorf("the upstream was asked %v", asked)
			}
		})
	}
	for _, r := range up.Requests() {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			t.Errorf("a write reached the upstream: %s %s", r.Method, r.Path)
		}
	}
}

// A path whose reference or name a client percent-encoded (JavaScript's
// encodeURIComponent and Python's quote(safe="") write a digest's colon
// as %3A) is served as its unescaped form, as distribution serves it.
func TestPercentEncodedPathServed(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/enc", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	esc := func(d string) string { return strings.Replace(d, ":", "%3A", 1) }
	wantManifest(t, get(t, m.URL()+"/v2/enc/manifests/"+esc(img.Digest)), img.Manifest, img.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/library%2Fenc/manifests/%31"), img.Manifest, img.MediaType)
	for _, b := range img.Blobs() {
		r := get(t, m.URL()+"/v2/enc/blobs/"+esc(b))
		if r.status != http.StatusOK || sha(r.body) != b {
			t.Fatalf("blob %s: %d %.200s", esc(b), r.status, r.body)
		}
	}
	if r := get(t, m.URL()+"/v2/enc/referrers/"+esc(img.Digest)); r.status != http.StatusOK {
		t.Errorf("referrers of %s: %d %.200s", esc(img.Digest), r.status, r.body)
	}
	// What unescapes to no valid name or reference is refused as such.
	wantError(t, get(t, m.URL()+"/v2/enc/blobs/sha256%3Azz"), http.StatusBadRequest, "DIGEST_INVALID")
	wantError(t, get(t, m.URL()+"/v2/library%2F..%2Fenc/manifests/1"), http.StatusBadRequest, "NAME_INVALID")
}

// A 405 says which methods its path is served with (RFC 9110's Allow,
// which a 405 must carry): GET and HEAD for a repository's routes, none
// for an upload's, and the mirror's own routes' methods.
func TestMethodNotAllowedSaysAllow(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/err", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	cases := []struct{ method, path, allow string }{
		{"PUT", "/v2/err/manifests/1", "GET, HEAD"},
		{"DELETE", "/v2/err/blobs/" + img.Layers[0], "GET, HEAD"},
		{"DELETE", "/v2/", "GET, HEAD"},
		{"PUT", "/v2/_catalog", "GET, HEAD"},
		{"OPTIONS", "/v2/err/tags/list", "GET, HEAD"},
		{"POST", "/v2/err/blobs/uploads/", ""},
		{"PATCH", "/v2/err/blobs/uploads/x", ""},
		{"PUT", "/metrics", "GET, HEAD"},
		{"DELETE", "/prefetch", "GET, HEAD, POST"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			r := do(t, c.method, m.URL()+c.path, nil)
			wantError(t, r, http.StatusMethodNotAllowed, "UNSUPPORTED")
			if got, ok := r.header["Allow"]; !ok || len(got) != 1 || got[0] != c.allow {
				t.Errorf("Allow %q (present: %v), want %q", got, ok, c.allow)
			}
		})
	}
	if n := len(up.Requests()); n > 0 {
		t.Errorf("the upstream was asked %v", up.Requests())
	}
}

// HEAD /metrics, a monitor's check that the endpoint answers (as
// RFC 9110 has it, a resource served to GET is to HEAD), is answered as
// the GET is, without its body. Before, it was a 405 saying "HEAD is not
// supported: docker-mirror is a read-only pull-through cache", as if the
// check had tried to write.
func TestHeadOfMetricsAnswered(t *testing.T) {
	m := servertest.Start(t, fixture.StartUpstream(t).URL())
	r := do(t, http.MethodHead, m.URL()+"/metrics", nil)
	if r.status != http.StatusOK || len(r.body) != 0 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Errorf("HEAD /metrics: %d, Content-Type %q, %d bytes of body; want 200, the text format's, no body", r.status, r.header.Get("Content-Type"), len(r.body))
	}
}

// Upstream failures with nothing cached: 429 passes on with Retry-After,
// 5xx is a 502, an unreachable upstream a 503; never a 404 or a 500.
func TestUpstreamFailuresWithoutCache(t *testing.T) {
	start := func(t *testing.T) (*fixture.Upstream, *servertest.Server, []string) {
		up := fixture.StartUpstream(t)
		img := up.SeedImage(t, "library/fail", "1", 1, 1<<10)
		m := servertest.Start(t, up.URL())
		return up, m, []string{m.URL() + "/v2/fail/manifests/1", m.URL() + "/v2/fail/blobs/" + img.Layers[0]}
	}
	t.Run("429", func(t *testing.T) {
		up, m, urls := start(t)
		up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"42"}}})
		r := get(t, urls[0])
		wantError(t, r, 429, "TOOMANYREQUESTS")
		if r.header.Get("Retry-After") != "42" {
			t.Errorf("Retry-After %q, want 42", r.header.Get("Retry-After"))
		}
		// Backing off: the upstream is not asked again before Retry-After.
		asked := up.Count("", "")
		up.ClearFault()
		for _, u := range urls {
			r := get(t, u)
			wantError(t, r, 429, "TOOMANYREQUESTS")
			if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 1 || ra > 42 {
				t.Errorf("%s: Retry-After %q while backing off", u, r.header.Get("Retry-After"))
			}
		}
		if n := up.Count("", ""); n != asked {
			t.Errorf("the upstream was asked %d more times while backing off", n-asked)
		}
		_ = m
	})
	// Docker Hub's pull limit is a 429 with no Retry-After: the mirror
	// leaves the upstream alone for its own back-off all the same, and
	// says so, from the first answer on, as it does while backing off.
	t.Run("429 without Retry-After", func(t *testing.T) {
		up, _, urls := start(t)
		up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests})
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			r := do(t, method, urls[0], map[string]string{"Accept": manifestAccept})
			if r.status != http.StatusTooManyRequests {
				t.Fatalf("%s: status %d, want 429", method, r.status)
			}
			want := strconv.Itoa(int(upstream.DefaultBackoff / time.Second))
			if ra := r.header.Get("Retry-After"); ra != want {
				t.Errorf("%s: Retry-After %q, want %s (the mirror's back-off)", method, ra, want)
			}
		}
	})
	t.Run("5xx", func(t *testing.T) {
		up, _, urls := start(t)
		up.SetFault(fixture.Fault{Status: http.StatusInternalServerError})
		for _, u := range urls {
			wantError(t, get(t, u), http.StatusBadGateway, "UNAVAILABLE")
		}
	})
	t.Run("down", func(t *testing.T) {
		up, m, urls := start(t)
		up.Stop()
		for _, u := range urls {
			wantError(t, get(t, u), http.StatusServiceUnavailable, "UNAVAILABLE")
		}
		wantError(t, get(t, m.URL()+"/v2/fail/tags/list"), http.StatusServiceUnavailable, "UNAVAILABLE")
	})
}

// An upstream that refuses the request as the client made it (400 with
// an OCI code of the client's input: a page size over its limit, a name or
// tag it does not take) is answered so, with its code and message: the
// client's to change, not a gateway failing (a 502, which clients retry).
// A 400 without such a code is still the upstream answering badly.
func TestUpstreamRefusalOfTheRequestPassedOn(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/refuse", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	refusal := func(kind, code, msg string) fixture.Fault {
		return fixture.Fault{Kind: kind, Status: http.StatusBadRequest, Header: http.Header{"Content-Type": {"application/json"}},
			Body: []byte(`{"errors":[{"code":"` + code + `","message":"` + msg + `"}]}`)}
	}
	for _, c := range []struct {
		kind, path, code, msg string
	}{
		{fixture.KindTags, "/v2/refuse/tags/list?n=5000", "PAGINATION_NUMBER_INVALID", "n must be no larger than 1000"},
		{fixture.KindManifest, "/v2/refuse/manifests/1", "NAME_INVALID", "repository name not allowed"},
		{fixture.KindBlob, "/v2/refuse/blobs/" + img.Layers[0], "DIGEST_INVALID", "digest algorithm not allowed"},
	} {
		up.SetFault(refusal(c.kind, c.code, c.msg))
		r := get(t, m.URL()+c.path)
		wantError(t, r, http.StatusBadRequest, c.code)
		if !strings.Contains(string(r.body), c.msg) {
			t.Errorf("%s: the answer does not say the upstream's reason %q: %s", c.path, c.msg, r.body)
		}
	}
	up.SetFault(fixture.Fault{Kind: fixture.KindTags, Status: http.StatusBadRequest, Body: []byte("bad request")})
	wantError(t, get(t, m.URL()+"/v2/refuse/tags/list"), http.StatusBadGateway, "UNAVAILABLE")
}

// A blob whose upstream bytes do not match its digest is neither stored nor
// served as a complete, successful response; a later good fetch works. The
// upstream holds the corrupt body just before its last byte, so the client
// that started the download and one that joined it are reading (they have
// bytes) when the end arrives: each then sees its connection broken. (That
// the last byte is held back until verification is pinned down by
// TestLastByteHeldBackUntilVerified.)
func TestCorruptBlobNeverServedNorStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/bad", "1", 1, 256<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	url := m.URL() + "/v2/bad/blobs/" + layer
	size := int(blobSizes(t, img)[layer])

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Corrupt: true})
	gate := up.GateBlob(layer, int64(size-1))
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	first := openStream(t, ctx, "first client", url)
	wait(t, ctx, gate.Reached(), "the upstream never reached the gate")
	follower := openStream(t, ctx, "follower", url)
	for _, c := range []*stream{first, follower} {
		c.readAtLeast(size / 2)
	}
	gate.Open() // the last byte: the download is complete, and corrupt
	for _, c := range []*stream{first, follower} {
		err := c.readRest()
		if err == nil || len(c.got) >= size {
			t.Errorf("%s: the corrupt blob was served as a complete 200 (%d of %d bytes, read error %v)", c.name, len(c.got), size, err)
		}
	}

	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/bad", digestOf(t, layer)); err == nil {
		t.Fatal("corrupt blob was stored")
	}
	// Not fetched again for the cache: no fill wants the blob, and its
	// clients have gone (a fill retries once: TestFillRetriesCorruptBlobOnce).
	if n := blobGets(up, layer); n != 1 {
		t.Errorf("%d upstream GETs of the corrupt blob, want 1", n)
	}
	// Nothing of the failure is kept: the next request fetches again.
	up.ClearFault()
	wantBlob(t, m, "bad", layer)
	if n := blobGets(up, layer); n != 2 {
		t.Errorf("%d upstream GETs of the blob, want 2 (fetched again once the upstream is sound)", n)
	}
}

// A background fill whose download of a layer is corrupt fetches it once
// more, and stores it if that answer is sound.
func TestFillRetriesCorruptBlobOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/bad", "1", 1, 64<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, PathContains: layer, Corrupt: true, Times: 1})
	wantManifest(t, get(t, m.URL()+"/v2/bad/manifests/1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	if n := blobGets(up, layer); n != 2 {
		t.Errorf("%d upstream GETs of the layer, want 2 (the corrupt one and its one retry)", n)
	}
	if _, err := m.Store.Stat(t.Context(), "library/bad", digestOf(t, layer)); err != nil {
		t.Fatalf("the layer was not stored after the retry: %v", err)
	}
	wantBlob(t, m, "bad", layer)
}

// A manifest whose bytes do not match the requested digest is refused and
// not cached; an unparsable manifest for a tag likewise.
func TestBadManifestsRefused(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/badm", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())

	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Corrupt: true})
	wantError(t, get(t, m.URL()+"/v2/badm/manifests/"+img.Digest), http.StatusBadGateway, "UNAVAILABLE")
	wantError(t, get(t, m.URL()+"/v2/badm/manifests/1"), http.StatusBadGateway, "UNAVAILABLE")
	up.ClearFault()
	wantManifest(t, get(t, m.URL()+"/v2/badm/manifests/"+img.Digest), img.Manifest, img.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/badm/manifests/1"), img.Manifest, img.MediaType)
}

// pulledOnDisk pulls library/<repo>:1 through a mirror on a filesystem
// store and waits for its fill; file is where the manifest is stored.
func pulledOnDisk(t *testing.T, repo string) (up *fixture.Upstream, img *fixture.Image, m *servertest.Server, file string) {
	t.Helper()
	up = fixture.StartUpstream(t)
	img = up.SeedImage(t, "library/"+repo, "1", 1, 1<<10)
	root := t.TempDir()
	m = servertest.StartWithStore(t, up.URL(), func(*storage.Index) (storage.Store, error) {
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": root})
	})
	wantManifest(t, get(t, m.URL()+"/v2/"+repo+"/manifests/1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	hex := strings.TrimPrefix(img.Digest, "sha256:")
	return up, img, m, filepath.Join(root, "blobs", "sha256", hex[:2], hex, "data")
}

// A stored manifest is read as the size its record holds: a file cut
// short is never served (with the upstream up it is fetched again), and
// bytes after the recorded ones are never sent, the recorded ones being
// the manifest's (they hash to its digest).
func TestStoredManifestReadAsRecorded(t *testing.T) {
	for _, c := range []struct {
		name  string
		alter func([]byte) []byte
		// served: the stored bytes still serve the manifest as a hit.
		served bool
	}{
		{"cut short", func(b []byte) []byte { return b[:len(b)-1] }, false},
		{"bytes after it", func(b []byte) []byte { return append(b, []byte("\n{}")...) }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			up, img, m, file := pulledOnDisk(t, "rec")
			byTag, byDigest := m.URL()+"/v2/rec/manifests/1", m.URL()+"/v2/rec/manifests/"+img.Digest
			if err := os.WriteFile(file, c.alter(bytes.Clone(img.Manifest)), 0o644); err != nil {
				t.Fatal(err)
			}
			up.ResetCounts()
			for i, url := range []string{byTag, byDigest} {
				r := get(t, url)
				wantManifest(t, r, img.Manifest, img.MediaType)
				want := "hit" // the stored bytes, or the ones fetched again
				if i == 0 && !c.served {
					want = "miss"
				}
				if r.header.Get("X-Cache") != want {
					t.Errorf("%s: X-Cache %q, want %s", url, r.header.Get("X-Cache"), want)
				}
				m.WaitIdle()
			}
			if n, want := up.Count(http.MethodGet, fixture.KindManifest), map[bool]int{true: 0, false: 1}[c.served]; n != want {
				t.Errorf("%d upstream manifest GETs, want %d", n, want)
			}
		})
	}
}

// A stored blob whose file is shorter than its record (cut by a disk
// error, or by hand) is never served as a hit, which a client would find
// to hash wrong at its last byte, pull after pull: it is fetched again, and
// the next pulls are hits of the whole blob.
func TestStoredBlobCutShortFetchedAgain(t *testing.T) {
	up, img, m, file := pulledOnDisk(t, "cut")
	layer := img.Layers[0]
	url := m.URL() + "/v2/cut/blobs/" + layer
	hex := strings.TrimPrefix(layer, "sha256:") // stored beside the manifest
	file = filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(file))), hex[:2], hex, "data")
	whole, err := os.ReadFile(file)
	if err != nil || sha(whole) != layer {
		t.Fatalf("stored layer at %s: %v", file, err)
	}
	if err := os.WriteFile(file, whole[:len(whole)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	up.ResetCounts()
	r := get(t, url)
	if r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("GET of the cut blob: %d, %d bytes hashing to %s, want the %d bytes of %s", r.status, len(r.body), sha(r.body), len(whole), layer)
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 1 {
		t.Errorf("%d upstream blob GETs, want 1", n)
	}
	m.WaitIdle()
	if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, whole) {
		t.Errorf("stored layer after the refetch: %v, %d bytes, want the %d of the blob", err, len(got), len(whole))
	}
	up.Stop()
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		r := do(t, method, url, nil)
		if r.status != http.StatusOK || r.header.Get("Content-Length") != strconv.Itoa(len(whole)) || r.header.Get("X-Cache") != "hit" {
			t.Errorf("%s after the refetch, upstream down: %d, Content-Length %s, X-Cache %q", method, r.status, r.header.Get("Content-Length"), r.header.Get("X-Cache"))
		}
	}
}

// A stored manifest is verified again whenever it is read: bytes on disk
// that no longer hash to their digest (same length, still valid JSON) are
// never served, by tag or by digest, on GET or HEAD. With the upstream down
// that is an error; with it up, what is served hashes to the digest.
func TestCorruptStoredManifestNeverServed(t *testing.T) {
	up, img, m, file := pulledOnDisk(t, "rot")
	byTag, byDigest := m.URL()+"/v2/rot/manifests/1", m.URL()+"/v2/rot/manifests/"+img.Digest
	r := get(t, byDigest)
	wantManifest(t, r, img.Manifest, img.MediaType)
	if r.header.Get("X-Cache") != "hit" {
		t.Fatalf("manifest by digest not served from the store: X-Cache %q", r.header.Get("X-Cache"))
	}

	// Rot one byte of the stored manifest: its first 'a' (inside a JSON
	// string, a key or a media type) becomes 'A', so the length and the
	// syntax stay the same.
	b, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(b, img.Manifest) {
		t.Fatalf("stored manifest at %s: %v (%d bytes, want the upstream's %d)", file, err, len(b), len(img.Manifest))
	}
	i := bytes.IndexByte(b, 'a')
	b[i] = 'A'
	if !json.Valid(b) || len(b) != len(img.Manifest) {
		t.Fatal("the rotten manifest should still be valid JSON of the same length")
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// notRotten fails the test if r carries the rotten bytes or claims
	// success for bytes that do not hash to the digest.
	notRotten := func(what string, r response) {
		t.Helper()
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", what, r.err)
		case bytes.Equal(r.body, b):
			t.Errorf("%s: the rotten stored manifest was served (%d)", what, r.status)
		case r.status == http.StatusOK && len(r.body) > 0 && sha(r.body) != img.Digest:
			t.Errorf("%s: 200 with bytes hashing to %s", what, sha(r.body))
		}
	}

	up.Stop()
	for _, url := range []string{byTag, byDigest} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := do(t, method, url, map[string]string{"Accept": manifestAccept})
			notRotten(method+" "+url+" (upstream down)", r)
			if r.status < 500 {
				t.Errorf("%s %s with the upstream down: %d, want an error", method, url, r.status)
			}
		}
	}

	up.Restart()
	r = get(t, byTag)
	notRotten("by tag (upstream up)", r)
	wantManifest(t, r, img.Manifest, img.MediaType) // fetched again
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		r := do(t, method, byDigest, map[string]string{"Accept": manifestAccept})
		notRotten(method+" by digest (upstream up)", r)
		if r.status == http.StatusOK && r.header.Get("Docker-Content-Digest") != img.Digest {
			t.Errorf("%s by digest: Docker-Content-Digest %q", method, r.header.Get("Docker-Content-Digest"))
		}
	}

	// The corrupt copy was replaced by the upstream's bytes: the next pulls
	// are hits that ask the upstream nothing, and work with it down.
	m.WaitIdle()
	if got, err := os.ReadFile(file); err != nil || !bytes.Equal(got, img.Manifest) {
		t.Errorf("stored manifest after the refetch: %v, rotten %v, want the upstream's bytes", err, bytes.Equal(got, b))
	}
	up.ResetCounts()
	for _, url := range []string{byDigest, byTag} {
		r := get(t, url)
		wantManifest(t, r, img.Manifest, img.MediaType)
		if r.header.Get("X-Cache") != "hit" {
			t.Errorf("%s after the refetch: X-Cache %q, want hit", url, r.header.Get("X-Cache"))
		}
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 0 {
		t.Errorf("%d upstream manifest GETs after the refetch, want 0: the corrupt copy was kept", n)
	}
	up.Stop()
	for _, url := range []string{byDigest, byTag} {
		wantManifest(t, get(t, url), img.Manifest, img.MediaType)
	}
}

// A client that does not accept indexes gets the linux/amd64 image for a
// tag; by digest the exact index is always served.
func TestAcceptNegotiation(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.Docker)
	m := servertest.Start(t, up.URL())
	amd := ma.Platforms["linux/amd64"]
	r := do(t, http.MethodGet, m.URL()+"/v2/multi/manifests/v1", map[string]string{"Accept": amd.MediaType})
	wantManifest(t, r, amd.Manifest, amd.MediaType)
	r = do(t, http.MethodGet, m.URL()+"/v2/multi/manifests/v1", nil)
	wantManifest(t, r, ma.Index, ma.MediaType)
	r = do(t, http.MethodGet, m.URL()+"/v2/multi/manifests/"+ma.Digest, map[string]string{"Accept": amd.MediaType})
	wantManifest(t, r, ma.Index, ma.MediaType)
}

// Accept is read as registries read it (RFC 9110): media types in any
// case, empty list elements ignored. A client that cannot read an index
// gets the linux/amd64 image for a tag however it spells that.
func TestAcceptReadAsRegistriesDo(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.Docker)
	m := servertest.Start(t, up.URL())
	amd := ma.Platforms["linux/amd64"]
	for _, accept := range []string{
		amd.MediaType + ", ",
		amd.MediaType + ",,",
		" , " + amd.MediaType,
	} {
		r := do(t, http.MethodGet, m.URL()+"/v2/multi/manifests/v1", map[string]string{"Accept": accept})
		wantManifest(t, r, amd.Manifest, amd.MediaType)
	}
	for _, accept := range []string{
		strings.ToUpper(ma.MediaType),
		"Application/Vnd.Docker.Distribution.Manifest.List.V2+Json; q=1",
	} {
		r := do(t, http.MethodGet, m.URL()+"/v2/multi/manifests/v1", map[string]string{"Accept": accept})
		wantManifest(t, r, ma.Index, ma.MediaType)
	}
}

// HEAD of the prefetch jobs' list or of one job (a monitor's check) is
// answered as the GET is, without its body. Before, it was a 405 saying
// "HEAD is not supported: docker-mirror is a read-only pull-through
// cache", as if the check had tried to write.
func TestHeadOfPrefetchAnswered(t *testing.T) {
	m := servertest.Start(t, fixture.StartUpstream(t).URL())
	for _, path := range []string{"/prefetch", "/prefetch/no-such-job"} {
		g, h := get(t, m.URL()+path), do(t, http.MethodHead, m.URL()+path, nil)
		if h.status != g.status || len(h.body) != 0 || h.header.Get("Content-Type") != g.header.Get("Content-Type") {
			t.Errorf("HEAD %s: %d, Content-Type %q, %d bytes of body; want GET's %d and %q, no body",
				path, h.status, h.header.Get("Content-Type"), len(h.body), g.status, g.header.Get("Content-Type"))
		}
	}
}
