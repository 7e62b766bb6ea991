package tests

import (
	"encoding/json"
	"net/http"
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
