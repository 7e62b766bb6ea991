package tests

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

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
