package tests

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A prefetch (or a sync) of a tag that moved upstream, while a client's
// pull of it fetches the manifest it moved to, shares that fetch: one
// upstream GET, one pull on Docker Hub's limit. The upstream holds the
// tag's GETs until the prefetch waits inside a fetch, its own or the
// pull's; before, it fetched the tag again in a flight of its own.
func TestPrefetchOfAMovedTagSharesAPullsFetch(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/moved", "1", 1, 1<<10)
	var armed atomic.Bool
	var gets atomic.Int32
	front, open := holdingFront(t, up, func(r *http.Request) bool {
		if !armed.Load() || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/manifests/1") {
			return false
		}
		gets.Add(1)
		return true
	})
	m := servertest.Start(t, front, proxy.WithReferrers(false))
	t.Cleanup(open) // before the mirror stops
	url := m.URL() + "/v2/moved/manifests/1"
	get(t, url)
	m.WaitIdle()

	// The tag moves upstream; the mirror's record of it is stale.
	img := up.SeedImage(t, "library/moved", "1", 1, 1<<10)
	m.Clock.Advance(2 * time.Minute)
	armed.Store(true)
	pulled := make(chan response, 1)
	go func() { pulled <- get(t, url) }()
	if in, ok := waitGoroutinesIn(t, "proxy.(*Proxy).fetchTagAnswer(", 1); !ok {
		t.Fatalf("%d pulls fetching the moved tag", in)
	}
	r := postPrefetch(t, m, `{"images": ["moved:1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	if in, ok := waitGoroutinesIn(t, "proxy.(*Proxy).copySource(", 1, "proxy.(*Proxy).startManifestOf(", "proxy.shared["); !ok {
		t.Fatalf("%d prefetches waiting for a fetch of the tag", in)
	}
	open()
	wantManifest(t, <-pulled, img.Manifest, img.MediaType)
	m.WaitIdle()
	if j := job(t, m, r.header.Get("Location")); j.State != storage.JobDone {
		t.Errorf("job %+v", j)
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d upstream GETs of the moved tag's manifest, want 1", n)
	}
}
