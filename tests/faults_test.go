package tests

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A blob download cut mid-stream resumes from where it stopped, so the
// client's pull completes; the upstream is asked with Range for the rest.
func TestBlobCutMidStreamResumes(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cut", "1", 1, 512<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 2})
	wantBlob(t, m, "cut", layer)
	m.WaitIdle()
	if n := blobGets(up, layer); n != 3 {
		t.Errorf("%d upstream GETs of the blob, want 3 (one cut twice, resumed twice)", n)
	}
	if n := up.BlobBytesFor(layer); n > int64(len(img.Manifest))+600<<10 {
		t.Errorf("upstream sent %d bytes: the resumes did not start where the cuts were", n)
	}
	up.Stop()
	wantBlob(t, m, "cut", layer)
}

// When the retry budget runs out, the client's connection is closed before
// the declared length, and nothing partial is stored.
func TestBlobCutBeyondRetriesAbortsClient(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cut", "1", 1, 512<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10})
	r := get(t, m.URL()+"/v2/cut/blobs/"+layer)
	if r.err == nil && r.status == http.StatusOK {
		t.Fatalf("a cut blob was answered as a complete 200 (%d bytes)", len(r.body))
	}
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/cut", digestOf(t, layer)); err == nil {
		t.Fatal("a partial blob was stored")
	}
	up.ClearFault()
	wantBlob(t, m, "cut", layer)
}

// While an upstream rate-limits, cached content keeps being served.
func TestRateLimitedUpstreamServesCache(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/rl", "1", 1, 8<<10)
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(time.Minute))
	cranePull(t, ref(t, m, "rl:1"))
	m.WaitIdle()
	up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"120"}}})
	m.Clock.Advance(time.Hour)
	for range 2 {
		r := get(t, m.URL()+"/v2/rl/manifests/1")
		wantManifest(t, r, img.Manifest, img.MediaType)
		if r.header.Get("X-Cache") != "stale" {
			t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
		}
		wantImage(t, m, "rl", img)
	}
	// One revalidation met the 429; the second was not sent.
	if n := up.Count(http.MethodHead, fixture.KindManifest); n != 1 {
		t.Errorf("%d HEADs reached a rate-limiting upstream, want 1", n)
	}
	r := get(t, m.URL()+"/v2/rl/manifests/other")
	wantError(t, r, 429, "TOOMANYREQUESTS")
	if !strings.Contains(string(r.body), "rate-limit") {
		t.Errorf("429 body does not say why: %s", r.body)
	}
}

// An upstream that hangs does not hang the clients: past the upstream
// timeout, what is cached is served and the rest answers 504.
func TestHangingUpstream(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/hang", "1", 1, 4<<10)
	other := up.SeedImage(t, "library/hang", "2", 1, 4<<10)
	m := servertest.StartUpstreams(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL(), Timeout: 300 * time.Millisecond}}, nil, proxy.WithTagTTL(time.Minute))
	cranePull(t, ref(t, m, "hang:1"))
	m.WaitIdle()

	up.SetFault(fixture.Fault{Latency: 10 * time.Minute})
	m.Clock.Advance(time.Hour)
	r := get(t, m.URL()+"/v2/hang/manifests/1")
	wantManifest(t, r, img.Manifest, img.MediaType)
	if r.header.Get("X-Cache") != "stale" {
		t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
	}
	wantImage(t, m, "hang", img)
	r = get(t, m.URL()+"/v2/hang/manifests/2")
	wantError(t, r, http.StatusGatewayTimeout, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "did not answer") {
		t.Errorf("504 body does not say why: %s", r.body)
	}
	wantError(t, get(t, m.URL()+"/v2/hang/blobs/"+other.Layers[0]), http.StatusGatewayTimeout, "UNAVAILABLE")
	up.Stop() // ends the hanging requests
}

// A manifest over 4 MiB is refused, not stored, and not served.
func TestOversizedManifestRefused(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":"` + strings.Repeat("a", 5<<20) + `"}}`)
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusOK, Body: big,
		Header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}})
	r := get(t, m.URL()+"/v2/huge/manifests/1")
	wantError(t, r, http.StatusBadGateway, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "limit") {
		t.Errorf("the error does not say why: %s", r.body)
	}
	if m.Index.StoredBytes() != 0 {
		t.Errorf("%d bytes stored", m.Index.StoredBytes())
	}
}
