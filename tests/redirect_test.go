package tests

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// redirectMetric reads docker_mirror_blob_redirects_total from /metrics.
func redirectMetric(t *testing.T, m *servertest.Server) string {
	t.Helper()
	r := get(t, m.URL()+"/metrics")
	for _, line := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(line, "docker_mirror_blob_redirects_total "); ok {
			return v
		}
	}
	t.Fatalf("no docker_mirror_blob_redirects_total in /metrics")
	return ""
}

// With storage.redirect on an S3 store, a GET of a stored blob is a 307 to
// a presigned URL of the bucket that serves the blob's bytes; HEAD and Range
// requests are answered by the mirror; every redirect is counted. Off by
// default.
func TestBlobRedirect(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 2, 64<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	m := servertest.StartConfigured(t, ups, func(c *config.Config) {
		onBucket(c)
		c.StorageRedirect = true
	})
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	layer := img.Layers[0]
	blobURL := m.URL() + "/v2/library/app/blobs/" + layer

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(blobURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("GET of a stored blob: %s; want 307", resp.Status)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != layer {
		t.Errorf("Docker-Content-Digest %q; want %s", got, layer)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Host != strings.TrimPrefix(s3srv.Endpoint, "http://") || !strings.Contains(loc.Path, bucket) || loc.Query().Get("X-Amz-Signature") == "" {
		t.Fatalf("Location %q: want a presigned URL of the bucket on %s", resp.Header.Get("Location"), s3srv.Endpoint)
	}
	// The presigned URL alone (no credentials) serves the blob.
	r := get(t, loc.String())
	if r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("presigned URL: status %d, body hashes to %s; want %s", r.status, sha(r.body), layer)
	}
	// A client that follows redirects gets the blob.
	if r := get(t, blobURL); r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("GET following the redirect: status %d, body hashes to %s; want %s", r.status, sha(r.body), layer)
	}
	if got := redirectMetric(t, m); got != "2" {
		t.Errorf("docker_mirror_blob_redirects_total = %s after two redirects", got)
	}

	// HEAD and Range: answered by the mirror itself.
	h := do(t, http.MethodHead, blobURL, nil)
	if h.status != http.StatusOK || h.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
		t.Errorf("HEAD: status %d, Content-Length %q", h.status, h.header.Get("Content-Length"))
	}
	rr := do(t, http.MethodGet, blobURL, map[string]string{"Range": "bytes=10-19"})
	if rr.status != http.StatusPartialContent || len(rr.body) != 10 {
		t.Errorf("Range: status %d, %d bytes; want 206 and 10", rr.status, len(rr.body))
	}
	// A cache revalidating (If-None-Match: its ETag) is answered 304 by
	// the mirror: sent to the bucket, whose ETag is not the digest, it
	// would get the whole blob again.
	if c := do(t, http.MethodGet, blobURL, map[string]string{"If-None-Match": `"` + layer + `"`}); c.status != http.StatusNotModified || len(c.body) != 0 {
		t.Errorf("If-None-Match its ETag: status %d, %d bytes; want 304 and none", c.status, len(c.body))
	}
	if got := redirectMetric(t, m); got != "2" {
		t.Errorf("docker_mirror_blob_redirects_total = %s; HEAD, Range and If-None-Match must not redirect", got)
	}

	// Off by default: the same bucket, served by the mirror.
	plain := servertest.StartConfigured(t, ups, onBucket)
	resp, err = noFollow.Get(plain.URL() + "/v2/library/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || sha(body) != layer {
		t.Errorf("without storage.redirect: %s; want the blob itself", resp.Status)
	}
}
