package tests

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// prefetchBody is a prefetch request of n images.
func prefetchBody(t *testing.T, n int) string {
	t.Helper()
	req := proxy.PrefetchRequest{}
	for i := range n {
		req.Images = append(req.Images, fmt.Sprintf("library/image-%d:latest", i))
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A job holds at most prefetch_max_images images (1,000 by default): a
// request for more is refused whole, saying the limit, before anything is
// queued or fetched.
func TestPrefetchImageLimit(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	r := postPrefetch(t, m, prefetchBody(t, 1001))
	wantError(t, r, http.StatusBadRequest, "INVALID_REQUEST")
	if !strings.Contains(string(r.body), "1000") || !strings.Contains(string(r.body), "1001") {
		t.Errorf("refusal does not name the limit 1000 and the 1001 images asked: %s", r.body)
	}
	if list := get(t, m.URL()+"/prefetch"); strings.Contains(string(list.body), `"id"`) {
		t.Errorf("a refused prefetch left a job: %s", list.body)
	}

	img := up.SeedImage(t, "library/small", "1", 1, 1<<10)
	m = servertest.Start(t, up.URL(), proxy.WithPrefetchMaxImages(2))
	r = postPrefetch(t, m, `{"images": ["small:1", "small:1", "small:1"]}`)
	wantError(t, r, http.StatusBadRequest, "INVALID_REQUEST")
	if !strings.Contains(string(r.body), "limit of 2") {
		t.Errorf("refusal does not name the limit 2: %s", r.body)
	}
	if n := up.Count("", ""); n != 0 {
		t.Errorf("refused prefetches reached the upstream %d times", n)
	}
	r = postPrefetch(t, m, `{"images": ["small:1", "small:1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST of 2 images with a limit of 2: %d %s", r.status, r.body)
	}
	m.WaitIdle()
	if j := job(t, m, r.header.Get("Location")); j.State != "done" || len(j.Images) != 2 || j.Images[1].Digest != img.Digest {
		t.Errorf("job %+v", j)
	}
}
