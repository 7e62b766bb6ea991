package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A tag the upstream answers 404 for when it is revalidated is forgotten
// only if it still names the digest that was checked: a fill that
// recorded the tag anew meanwhile (the tag pushed again upstream, a sync,
// another replica) keeps its record. Shown by recording the tag's new
// digest while the upstream's HEAD is being answered 404.
func TestTagGoneUpstreamKeepsATagRecordedMeanwhile(t *testing.T) {
	up := fixture.StartUpstream(t)
	old := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	moved := up.SeedImage(t, "library/app", "v2", 1, 1<<10)
	var (
		armed atomic.Bool
		index *storage.Index
	)
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if armed.Load() && r.URL.Path == "/v2/library/app/manifests/v1" {
			if r.Method != http.MethodHead {
				// The tag is gone: its GET says so too.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				return
			}
			// A concurrent fill records the tag where it points now.
			if err := index.RecordManifest(storage.ManifestEntry{Upstream: DefaultHost, Repo: "library/app", Digest: digest.Digest(moved.Digest), Tag: "v1",
				Record: storage.ManifestRecord{MediaType: moved.MediaType, Size: int64(len(moved.Manifest)), FetchedAt: time.Now()}}); err != nil {
				t.Error(err)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	p, _, ix := testMirror(t, nil, front.URL, WithTagTTL(0))
	index = ix
	pull := func(want int) {
		t.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
		req.Header.Set("Accept", old.MediaType)
		p.Handler().ServeHTTP(rec, req)
		if rec.Code != want {
			t.Fatalf("GET v1: %d %s; want %d", rec.Code, rec.Body, want)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	pull(http.StatusOK)
	if rec, ok, err := ix.Tag(DefaultHost, "library/app", "v1"); err != nil || !ok || rec.Digest != digest.Digest(old.Digest) {
		t.Fatalf("tag record after the first pull: %+v %v %v", rec, ok, err)
	}
	armed.Store(true)
	pull(http.StatusNotFound)
	rec, ok, err := ix.Tag(DefaultHost, "library/app", "v1")
	if err != nil || !ok || rec.Digest != digest.Digest(moved.Digest) {
		t.Fatalf("tag record recorded while the upstream answered 404: %+v %v %v; want it kept, naming %s", rec, ok, err, moved.Digest)
	}
}
