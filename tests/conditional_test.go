package tests

import (
	"net/http"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A cache in front of the mirror revalidating what it holds (If-None-Match
// with the ETag the mirror sent) is answered 304 without the body; a
// client resuming with If-Range gets the range only while its validator is
// still the blob's ETag, else the whole blob (RFC 9110 13.1.2, 13.1.5).
func TestConditionalRequests(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cond", "1", 1, 64<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	blobURL, manifestURL := m.URL()+"/v2/cond/blobs/"+layer, m.URL()+"/v2/cond/manifests/1"
	wantManifest(t, get(t, manifestURL), img.Manifest, img.MediaType)
	m.WaitIdle()
	full := get(t, blobURL)
	if full.status != http.StatusOK || sha(full.body) != layer {
		t.Fatalf("GET: %d, digest %s", full.status, sha(full.body))
	}
	etag := full.header.Get("ETag")

	cases := []struct {
		name, method, url string
		header            map[string]string
		status            int
		body              []byte
	}{
		{"blob If-None-Match its ETag", http.MethodGet, blobURL, map[string]string{"If-None-Match": etag}, http.StatusNotModified, nil},
		{"blob If-None-Match weak, in a list", http.MethodGet, blobURL, map[string]string{"If-None-Match": `"x", W/` + etag}, http.StatusNotModified, nil},
		{"blob If-None-Match *", http.MethodHead, blobURL, map[string]string{"If-None-Match": "*"}, http.StatusNotModified, nil},
		{"blob If-None-Match another", http.MethodGet, blobURL, map[string]string{"If-None-Match": `"sha256:other"`}, http.StatusOK, full.body},
		{"blob If-Range its ETag", http.MethodGet, blobURL, map[string]string{"Range": "bytes=10-19", "If-Range": etag}, http.StatusPartialContent, full.body[10:20]},
		{"blob If-Range another", http.MethodGet, blobURL, map[string]string{"Range": "bytes=10-19", "If-Range": `"cdn-etag-1"`}, http.StatusOK, full.body},
		{"blob If-Range a date", http.MethodGet, blobURL, map[string]string{"Range": "bytes=10-19", "If-Range": "Sun, 06 Dec 2026 10:00:00 GMT"}, http.StatusOK, full.body},
		{"manifest If-None-Match its ETag", http.MethodGet, manifestURL, map[string]string{"Accept": manifestAccept, "If-None-Match": `"` + img.Digest + `"`}, http.StatusNotModified, nil},
		{"manifest If-None-Match another", http.MethodGet, manifestURL, map[string]string{"Accept": manifestAccept, "If-None-Match": `"sha256:other"`}, http.StatusOK, img.Manifest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, c.method, c.url, c.header)
			if r.err != nil || r.status != c.status {
				t.Fatalf("status %d (err %v), want %d", r.status, r.err, c.status)
			}
			if c.method == http.MethodGet && string(r.body) != string(c.body) {
				t.Fatalf("%d bytes, want %d", len(r.body), len(c.body))
			}
			if c.status == http.StatusNotModified && (r.header.Get("ETag") == "" || r.header.Get("Docker-Content-Digest") == "") {
				t.Fatalf("304 without its ETag and digest: %v", r.header)
			}
		})
	}
}

// A cache in front revalidating a blob the mirror does not hold (evicted
// since, or never fetched through this replica) is answered 304 once the
// upstream confirms the repository has it (a HEAD), without a byte of the
// blob fetched for an answer that sends none.
func TestConditionalGetOfUncachedBlobFetchesNothing(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cond", "1", 1, 64<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	r := do(t, http.MethodGet, m.URL()+"/v2/cond/blobs/"+layer, map[string]string{"If-None-Match": `"` + layer + `"`})
	if r.err != nil || r.status != http.StatusNotModified || len(r.body) != 0 || r.header.Get("Docker-Content-Digest") != layer {
		t.Fatalf("status %d (err %v), %d bytes, digest %q: want a 304 of %s", r.status, r.err, len(r.body), r.header.Get("Docker-Content-Digest"), layer)
	}
	m.WaitIdle()
	if n, b := blobGets(up, layer), up.BlobBytesFor(layer); n != 0 || b != 0 {
		t.Errorf("the upstream was asked for the blob %d times (%d bytes sent) for a 304", n, b)
	}
	// Not in the upstream's repository: unknown, as without the condition.
	missing := "sha256:" + strings.Repeat("0", 64)
	wantError(t, do(t, http.MethodGet, m.URL()+"/v2/cond/blobs/"+missing, map[string]string{"If-None-Match": `"` + missing + `"`}), http.StatusNotFound, "BLOB_UNKNOWN")
}

// A cache in front revalidating a manifest the mirror does not hold (its
// tag or digest evicted since, or never pulled through this replica) is
// answered 304 once the upstream's HEAD names the manifest the cache
// holds, without the GET Docker Hub would count as a pull for an answer
// that sends no body. An ETag the upstream's manifest does not have, or a
// tag's index to a client that does not accept one, is answered as
// without the condition.
func TestConditionalGetOfUncachedManifestFetchesNothing(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cond", "1", 1, 4<<10)
	ma := up.SeedMultiArch(t, "library/cond", "multi", fixture.OCI)
	m := servertest.Start(t, up.URL())
	cond := map[string]string{"Accept": manifestAccept, "If-None-Match": `"` + img.Digest + `"`}
	for _, ref := range []string{"1", img.Digest} {
		up.ResetCounts()
		r := do(t, http.MethodGet, m.URL()+"/v2/cond/manifests/"+ref, cond)
		if r.err != nil || r.status != http.StatusNotModified || len(r.body) != 0 || r.header.Get("Docker-Content-Digest") != img.Digest || r.header.Get("ETag") != `"`+img.Digest+`"` {
			t.Fatalf("%s: status %d (err %v), %d bytes, digest %q: want a 304 of %s", ref, r.status, r.err, len(r.body), r.header.Get("Docker-Content-Digest"), img.Digest)
		}
		m.WaitIdle()
		if g := up.Count(http.MethodGet, fixture.KindManifest); g != 0 {
			t.Errorf("%s: %d manifest GETs upstream for a 304, want 0: %+v", ref, g, up.Requests())
		}
	}
	// Another manifest: the answer is the upstream's, whole.
	r := do(t, http.MethodGet, m.URL()+"/v2/cond/manifests/1", map[string]string{"Accept": manifestAccept, "If-None-Match": `"sha256:other"`})
	if r.status != http.StatusOK || string(r.body) != string(img.Manifest) {
		t.Fatalf("If-None-Match of another manifest: %d, %d bytes; want 200 and the manifest", r.status, len(r.body))
	}
	// An index's ETag, from a client that takes only images: it is
	// answered the linux/amd64 image, not 304.
	amd64 := ma.Platforms["linux/amd64"]
	r = do(t, http.MethodGet, m.URL()+"/v2/cond/manifests/multi", map[string]string{"Accept": amd64.MediaType, "If-None-Match": `"` + ma.Digest + `"`})
	if r.status != http.StatusOK || string(r.body) != string(amd64.Manifest) {
		t.Fatalf("If-None-Match of an index from a client without index types: %d, %.100s; want 200 and the linux/amd64 image", r.status, r.body)
	}
	m.WaitIdle()
}
