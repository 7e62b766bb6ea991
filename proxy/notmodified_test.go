package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A conditional GET (If-None-Match: a cache in front revalidating) of a
// manifest or blob the mirror does not hold, answered 304 once the
// upstream's HEAD confirms what the client holds, fetched nothing: it is
// X-Cache: revalidated (as a tag the mirror holds, confirmed by the same
// HEAD), a hit in the hit ratio, not a miss, which says the upstream sent
// the content for the client (a pull Docker Hub counts).
func TestNotModifiedAfterUpstreamHeadNotAMiss(t *testing.T) {
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	for _, path := range []string{
		"/v2/library/app/manifests/v1",
		"/v2/library/app/manifests/" + img.Digest,
		"/v2/library/app/blobs/" + img.Layers[0],
	} {
		etag := `"` + img.Digest + `"`
		if path == "/v2/library/app/blobs/"+img.Layers[0] {
			etag = `"` + img.Layers[0] + `"`
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // fail, not hang
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", img.MediaType)
		req.Header.Set("If-None-Match", etag)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified {
			t.Fatalf("%s: %d, want 304", path, resp.StatusCode)
		}
		if c := resp.Header.Get(cacheHeader); c != "revalidated" {
			t.Errorf("%s: X-Cache %q, want revalidated", path, c)
		}
	}
	f.waitIdle(t)
	if n := f.up.Count(http.MethodGet, fixture.KindManifest) + f.up.Count(http.MethodGet, fixture.KindBlob); n != 0 {
		t.Errorf("%d GETs upstream for answers without a body: %+v", n, f.up.Requests())
	}
	if c := f.p.Traffic().SinceStart; c.Misses != 0 || c.Hits != 3 {
		t.Errorf("traffic counted %d hits and %d misses, want 3 and 0", c.Hits, c.Misses)
	}
}
