package tests

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The status page's hit ratio and bytes from the cache are of manifest and
// blob answers, as it says: tag lists, always asked of the upstream while
// it answers (X-Cache: miss), counted too, and a mirror whose clients list
// tags (a CI's `crane ls`, Renovate, an image updater) showed a hit ratio
// of a few percent while every pull was a hit.
func TestHitRatioOfManifestsAndBlobs(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType) // a miss
	m.WaitIdle()
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType) // a hit
	for range 4 {
		if r := get(t, m.URL()+"/v2/team/app/tags/list"); r.status != http.StatusOK {
			t.Fatalf("tags: %d %s", r.status, r.body)
		}
	}
	var st struct {
		Traffic struct {
			SinceStart struct {
				Requests int64 `json:"requests"`
				Hits     int64 `json:"hits"`
				Misses   int64 `json:"misses"`
			} `json:"since_start"`
			HitRatio float64 `json:"hit_ratio"`
		} `json:"traffic"`
	}
	if err := json.Unmarshal(get(t, m.URL()+"/api/v1/status").body, &st); err != nil {
		t.Fatal(err)
	}
	if tr := st.Traffic; tr.SinceStart.Hits != 1 || tr.SinceStart.Misses != 1 || tr.HitRatio != 0.5 || tr.SinceStart.Requests != 6 {
		t.Errorf("a manifest missed, then hit, and 4 tag lists: %d requests, %d hits, %d misses, hit ratio %v; want 6 requests, 1 hit, 1 miss, 0.5",
			tr.SinceStart.Requests, tr.SinceStart.Hits, tr.SinceStart.Misses, tr.HitRatio)
	}
}

// An error answer is not a hit or a miss: a tag gone upstream (404), a
// rate limit passed on (429) or an upstream failing (502) served nothing
// and fetched nothing. Counted as misses (they say X-Cache: miss: the
// upstream was asked), a mirror whose clients retried an unknown tag, or
// were refused through a rate limit, showed its hit ratio falling and
// misses rising on the status page and in
// docker_mirror_cache_requests_total while every pull was a hit; they are
// counted by status in docker_mirror_http_requests_total.
func TestErrorAnswersAreNotMisses(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	up.SeedImage(t, "team/app", "v2", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType) // a miss
	m.WaitIdle()
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType) // a hit
	wantError(t, get(t, m.URL()+"/v2/team/app/manifests/gone"), http.StatusNotFound, "MANIFEST_UNKNOWN")
	wantError(t, get(t, m.URL()+"/v2/team/app/blobs/sha256:"+strings.Repeat("0", 64)), http.StatusNotFound, "BLOB_UNKNOWN")
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusInternalServerError, Times: 1})
	wantError(t, get(t, m.URL()+"/v2/team/app/manifests/v2"), http.StatusBadGateway, "UNAVAILABLE")
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"60"}}})
	r := get(t, m.URL()+"/v2/team/app/manifests/v2")
	wantError(t, r, http.StatusTooManyRequests, "TOOMANYREQUESTS")
	if c := r.header.Get("X-Cache"); c != "miss" {
		t.Errorf("a 429 passed on: X-Cache %q, want miss (the upstream was asked)", c)
	}

	var st struct {
		Traffic struct {
			SinceStart struct {
				Hits   int64 `json:"hits"`
				Misses int64 `json:"misses"`
			} `json:"since_start"`
			HitRatio float64 `json:"hit_ratio"`
		} `json:"traffic"`
	}
	m.WaitRequests()
	if err := json.Unmarshal(get(t, m.URL()+"/api/v1/status").body, &st); err != nil {
		t.Fatal(err)
	}
	if tr := st.Traffic; tr.SinceStart.Hits != 1 || tr.SinceStart.Misses != 1 || tr.HitRatio != 0.5 {
		t.Errorf("a manifest missed, then hit, then 4 error answers: status page %d hits, %d misses, hit ratio %v; want 1 hit, 1 miss, 0.5",
			tr.SinceStart.Hits, tr.SinceStart.Misses, tr.HitRatio)
	}
	got := scrape(t, m)
	for key, want := range map[string]float64{
		`docker_mirror_cache_requests_total{kind="manifest",result="miss"}`:             1,
		`docker_mirror_cache_requests_total{kind="manifest",result="hit"}`:              1,
		`docker_mirror_cache_requests_total{kind="blob",result="miss"}`:                 0,
		`docker_mirror_http_requests_total{method="GET",route="manifest",status="404"}`: 1,
		`docker_mirror_http_requests_total{method="GET",route="manifest",status="429"}`: 1,
		`docker_mirror_http_requests_total{method="GET",route="manifest",status="502"}`: 1,
		`docker_mirror_http_requests_total{method="GET",route="blob",status="404"}`:     1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
}

// A herd of clients asking for one blob not held (a CI fleet's first pull
// of a new image) is served one download, fetched once: one miss, and the
// others, served bytes the upstream sent once for all, hits. Counted as 16
// misses, the status page showed no byte saved, and the hit ratio and
// docker_mirror_cache_requests_total a miss for each, where the upstream
// was asked once.
func TestHerdOfOneBlobIsOneMiss(t *testing.T) {
	const clients = 16
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 1, 64<<10)
	layer := img.Layers[0]
	m := servertest.Start(t, up.URL())
	gate := up.GateBlob(layer, 1)
	front := startBlobFront(t, m, func(_ string, n int) {
		if n == clients {
			gate.Open() // every client's answer has begun: all share the download
		}
	})
	caches := make(chan string, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			r := do(t, http.MethodGet, front.url+"/v2/herd/blobs/"+layer, nil)
			if r.err != nil || r.status != http.StatusOK || sha(r.body) != layer {
				t.Errorf("blob GET: status %d, %v", r.status, r.err)
			}
			caches <- r.header.Get("X-Cache")
		})
	}
	wg.Wait()
	close(caches)
	seen := map[string]int{}
	for c := range caches {
		seen[c]++
	}
	if seen["miss"] != 1 || seen["hit"] != clients-1 {
		t.Errorf("X-Cache of %d clients sharing one download: %v, want 1 miss and %d hits", clients, seen, clients-1)
	}
	if n := blobGets(up, layer); n != 1 {
		t.Fatalf("blob fetched %d times, want once", n)
	}
	m.WaitIdle()
	size, err := m.Store.Stat(t.Context(), "library/herd", digestOf(t, layer))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Traffic struct {
			SinceStart struct {
				Hits              int64 `json:"hits"`
				Misses            int64 `json:"misses"`
				BytesFromCache    int64 `json:"bytes_from_cache"`
				BytesFromUpstream int64 `json:"bytes_from_upstream"`
			} `json:"since_start"`
		} `json:"traffic"`
	}
	m.WaitRequests()
	if err := json.Unmarshal(get(t, m.URL()+"/api/v1/status").body, &st); err != nil {
		t.Fatal(err)
	}
	if s := st.Traffic.SinceStart; s.Misses != 1 || s.Hits != clients-1 || s.BytesFromUpstream != size || s.BytesFromCache != (clients-1)*size {
		t.Errorf("status page: %d hits, %d misses, %d bytes from the cache, %d from the upstream; want %d, 1, %d, %d",
			s.Hits, s.Misses, s.BytesFromCache, s.BytesFromUpstream, clients-1, (clients-1)*size, size)
	}
	got := scrape(t, m)
	if h, mi := got[`docker_mirror_cache_requests_total{kind="blob",result="hit"}`], got[`docker_mirror_cache_requests_total{kind="blob",result="miss"}`]; h != clients-1 || mi != 1 {
		t.Errorf("docker_mirror_cache_requests_total of blobs: %v hits, %v misses; want %d, 1", h, mi, clients-1)
	}
}

// A herd of clients pulling a tag not held shares one fetch of its
// manifest: one miss, and the others, answered the manifest fetched once
// for all, hits (as for a blob: TestHerdOfOneBlobIsOneMiss). The upstream
// holds the manifest GET until every client waits on the fetch (seen on
// their goroutines' stacks), so they overlap for certain.
func TestHerdOfOneManifestIsOneMiss(t *testing.T) {
	const herd = 16
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 1, 1<<10)
	front, open := holdingFront(t, up, func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/1")
	})
	m := servertest.Start(t, front, proxy.WithReferrers(false))
	t.Cleanup(open) // before the mirror stops
	results := make(chan response, herd)
	for range herd {
		go func() { results <- get(t, m.URL()+"/v2/herd/manifests/1") }()
	}
	if in, ok := waitGoroutinesIn(t, "proxy.(*Proxy).startManifestOf(", herd); !ok {
		t.Fatalf("%d of %d clients waiting on the manifest's fetch", in, herd)
	}
	open()
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	seen := map[string]int{}
	for range herd {
		select {
		case r := <-results:
			wantManifest(t, r, img.Manifest, img.MediaType)
			seen[r.header.Get("X-Cache")]++
		case <-ctx.Done():
			t.Fatal("a client of the herd got no answer")
		}
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 1 {
		t.Fatalf("a herd of %d at a tag not held: %d manifest GETs upstream, want 1", herd, n)
	}
	if seen["miss"] != 1 || seen["hit"] != herd-1 {
		t.Errorf("X-Cache of %d clients sharing one manifest fetch: %v, want 1 miss and %d hits", herd, seen, herd-1)
	}
	m.WaitIdle()
	got := scrape(t, m)
	if h, mi := got[`docker_mirror_cache_requests_total{kind="manifest",result="hit"}`], got[`docker_mirror_cache_requests_total{kind="manifest",result="miss"}`]; h != herd-1 || mi != 1 {
		t.Errorf("docker_mirror_cache_requests_total of manifests: %v hits, %v misses; want %d, 1", h, mi, herd-1)
	}
}
