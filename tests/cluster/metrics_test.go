package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A client's miss of a blob another replica owns is counted once in the
// cluster: by the replica the client asked. The owner's answer to it
// (counted in docker_mirror_cluster_served_for_peers_total) is no client
// traffic: before, it counted a second miss and the blob's bytes again,
// so that summed over the replicas (or over its own status page) the
// cache answered twice the requests it did and the documented byte hit
// ratio, served bytes against upstream bytes, showed half of a cluster's
// misses as served from the cache.
func TestForwardedMissCountedOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/counted", "1", 1, 64<<10)
	rs := startCluster(t, 2, up, sharedDir, nil)
	layer := img.Layers[0]
	o := owner(rs, layer)
	via := rs[0]
	if via == o {
		via = rs[1]
	}
	body := wantBlob(t, via.url, "library/counted", layer)
	for _, r := range rs {
		r.waitIdle(t)
	}
	// Every request's handler has returned, and counted it.
	for _, r := range rs {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := r.hs.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	if n := o.metric(t, "docker_mirror_cluster_served_for_peers_total", nil); n != 1 {
		t.Fatalf("the owner served %v requests for peers, want the blob's 1", n)
	}
	var answers, served float64
	var misses, bytesFromUpstream int64
	for _, r := range rs {
		answers += r.metric(t, "docker_mirror_cache_requests_total", map[string]string{"kind": "blob"})
		served += r.metric(t, "docker_mirror_served_bytes_total", map[string]string{"route": "blob"})
		tr := r.srv.Proxy.Traffic().SinceStart
		misses += tr.Misses
		bytesFromUpstream += tr.BytesFromUpstream
	}
	if answers != 1 || served != float64(len(body)) {
		t.Errorf("the replicas counted %v blob answers and %v bytes served, want 1 and %d", answers, served, len(body))
	}
	if misses != 1 || bytesFromUpstream != int64(len(body)) {
		t.Errorf("the replicas' status counted %d misses of %d bytes, want 1 of %d", misses, bytesFromUpstream, len(body))
	}
}
