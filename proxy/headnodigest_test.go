package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A tag revalidated through an upstream whose HEAD answers without
// Docker-Content-Digest (only a GET can tell where the tag points) and
// that moved to an image the mirror does not hold is fetched with one GET,
// not two: the revalidation's GET is the fetch.
func TestMovedTagRevalidatedWithoutHeadDigestFetchedOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	front := headWithoutFront(t, up, "Docker-Content-Digest")
	p, _, _ := testMirror(t, nil, front, WithTagTTL(0))
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	pull := func(want *fixture.Image) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/v2/library/app/manifests/v1", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", want.MediaType)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.Digest {
			t.Fatalf("GET v1: %d %s, want %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), want.Digest)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	pull(img)
	moved := up.SeedImage(t, "library/app", "v1", 2, 1<<10)
	up.ResetCounts()
	pull(moved)
	if n := v1GETs(up); n != 1 {
		t.Errorf("the moved tag was fetched with %d GETs, want 1: %+v", n, up.Requests())
	}
}

// As a pull, a copy (prefetch, sync) of such a tag fetches it once.
func TestCopyOfMovedTagWithoutHeadDigestFetchedOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	front := headWithoutFront(t, up, "Docker-Content-Digest")
	p, _, _ := testMirror(t, nil, front)
	if _, err := p.Copy(t.Context(), "app:v1", nil, nil); err != nil {
		t.Fatal(err)
	}
	moved := up.SeedImage(t, "library/app", "v1", 2, 1<<10)
	up.ResetCounts()
	prog, err := p.Copy(t.Context(), "app:v1", nil, nil)
	if err != nil || prog.Digest != moved.Digest {
		t.Fatalf("copy of the moved tag: %s %v, want %s", prog.Digest, err, moved.Digest)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := v1GETs(up); n != 1 {
		t.Errorf("the moved tag was fetched with %d GETs, want 1: %+v", n, up.Requests())
	}
}

// The mirror command reads a tag's manifest back from its registry
// destination (WithManifestsFromStore), the tag's digest asked with a
// HEAD. Through an upstream whose HEAD does not say it, the GET that told
// is the fetch: a manifest the destination lacks is not asked for again
// (another pull for Docker Hub).
func TestManifestsFromStoreTagWithoutHeadDigestFetchedOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	front := headWithoutFront(t, up, "Docker-Content-Digest")
	dest := fixture.StartDestination(t, nil)
	store, err := destination.New(dest.URL() + "/mirror")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.CloseIdleConnections)
	p, _, _ := testMirror(t, store, front, WithManifestsFromStore())
	prog, err := p.Copy(t.Context(), "app:v1", nil, nil)
	if err != nil || prog.Digest != img.Digest {
		t.Fatalf("copy of v1: %s %v, want %s", prog.Digest, err, img.Digest)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := v1GETs(up); n != 1 {
		t.Errorf("v1 was fetched with %d GETs, want 1: %+v", n, up.Requests())
	}
}

// v1GETs counts the GETs of library/app:v1's manifest up received.
func v1GETs(up *fixture.Upstream) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && r.Path == "/v2/library/app/manifests/v1" {
			n++
		}
	}
	return n
}

// headWithoutFront serves up behind a front whose HEADs answer without
// header (a gateway or CDN in front of the registry): without
// Docker-Content-Digest, only a GET tells where a tag points. It returns
// the front's URL.
func headWithoutFront(t *testing.T, up *fixture.Upstream, header string) string {
	t.Helper()
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodHead {
			resp.Header.Del(header)
		}
		return nil
	}
	front := httptest.NewServer(rp)
	t.Cleanup(front.Close)
	return front.URL
}
