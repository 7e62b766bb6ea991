package cluster_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A cache in front (nginx, a CDN) revalidating a blob no replica holds
// yet, through a replica that does not own it, gets a 304 and nothing is
// fetched, as from a mirror alone: before, the request went to the owner
// without its condition, which fetched the whole blob from the upstream
// and sent it back, 200.
func TestConditionalGetThroughNonOwnerFetchesNothing(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cond", "1", 1, 64<<10)
	rs := startCluster(t, 2, up, sharedDir, nil)
	layer := img.Layers[0]
	via := rs[0]
	if owner(rs, layer) == via {
		via = rs[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, h, body, err := get(ctx, via.url+"/v2/library/cond/blobs/"+layer, map[string]string{"If-None-Match": `"` + layer + `"`})
	if err != nil || st != http.StatusNotModified || len(body) != 0 || h.Get("Docker-Content-Digest") != layer {
		t.Fatalf("status %d (err %v), %d bytes, digest %q: want a 304 of %s", st, err, len(body), h.Get("Docker-Content-Digest"), layer)
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	if n, b := blobGets(up, layer), up.BlobBytesFor(layer); n != 0 || b != 0 {
		t.Errorf("the upstream was asked for the blob %d times (%d bytes sent) for a 304", n, b)
	}
}
