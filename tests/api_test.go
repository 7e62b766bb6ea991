package tests

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

func TestBaseEndpoint(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		r := do(t, method, m.URL()+"/v2/", nil)
		if r.status != http.StatusOK || r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
			t.Fatalf("%s /v2/: %d %v", method, r.status, r.header)
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
	}{
		{"unknown tag", "GET", "/v2/err/manifests/nope", 404, "MANIFEST_UNKNOWN"},
		{"unknown manifest digest", "GET", "/v2/err/manifests/" + missing, 404, "MANIFEST_UNKNOWN"},
		{"unknown blob", "GET", "/v2/err/blobs/" + missing, 404, "BLOB_UNKNOWN"},
		{"unknown repository tags", "GET", "/v2/nosuchrepo/tags/list", 404, "NAME_UNKNOWN"},
		{"invalid name", "GET", "/v2/Bad_Name!/manifests/1", 400, "NAME_INVALID"},
		{"invalid tag", "GET", "/v2/err/manifests/-bad", 400, "TAG_INVALID"},
		{"invalid manifest digest", "GET", "/v2/err/manifests/sha256:xyz", 400, "DIGEST_INVALID"},
		{"invalid blob digest", "GET", "/v2/err/blobs/sha256:1234", 400, "DIGEST_INVALID"},
		{"bad page size", "GET", "/v2/err/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"},
		{"unconfigured upstream host", "GET", "/v2/evil.example.com/x/manifests/1", 404, "NAME_UNKNOWN"},
		{"unconfigured ns", "GET", "/v2/x/manifests/1?ns=evil.example.com", 404, "NAME_UNKNOWN"},
		{"blob upload", "POST", "/v2/err/blobs/uploads/", 405, "UNSUPPORTED"},
		{"manifest push", "PUT", "/v2/err/manifests/1", 405, "UNSUPPORTED"},
		{"manifest delete", "DELETE", "/v2/err/manifests/" + img.Digest, 405, "UNSUPPORTED"},
		{"blob delete", "DELETE", "/v2/err/blobs/" + img.Layers[0], 405, "UNSUPPORTED"},
		{"patch", "PATCH", "/v2/err/blobs/uploads/x", 405, "UNSUPPORTED"},
		{"referrers (upstream without the API)", "GET", "/v2/err/referrers/" + img.Digest, 404, "MANIFEST_UNKNOWN"},
		{"catalog (not served)", "GET", "/v2/_catalog", 404, "NAME_UNKNOWN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantError(t, do(t, c.method, m.URL()+c.path, nil), c.status, c.code)
		})
	}
	if n := up.Count("", ""); n == 0 {
		t.Log("no upstream requests") // the unknown cases must have asked
	}
	for _, r := range up.Requests() {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			t.Errorf("a write reached the upstream: %s %s", r.Method, r.Path)
		}
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

// A blob whose upstream bytes do not match its digest is neither stored nor
// served as a complete, successful response; a later good fetch works.
func TestCorruptBlobNeverServedNorStored(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/bad", "1", 1, 256<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	url := m.URL() + "/v2/bad/blobs/" + layer

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Corrupt: true})
	r := get(t, url)
	if r.err == nil && r.status == http.StatusOK {
		t.Fatalf("corrupt blob served as a complete 200 (%d bytes, digest %s)", len(r.body), sha(r.body))
	}
	if r.err == nil && r.status < 500 {
		t.Fatalf("corrupt blob answered %d", r.status)
	}
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/bad", digestOf(t, layer)); err == nil {
		t.Fatal("corrupt blob was stored")
	}
	// The fetch was retried once (for the cache), no more.
	if n := blobGets(up, layer); n != 2 {
		t.Errorf("%d upstream GETs of the corrupt blob, want 2", n)
	}

	up.ClearFault()
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
