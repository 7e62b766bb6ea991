package cluster_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A client's request carrying the hop header (Docker-Mirror-Forwarded)
// without the cluster's secret was taken for another replica's: its miss
// was fetched from the upstream where it arrived, not through its owner,
// and counted as served for a peer, not in the cache's requests and bytes
// nor on the status page. With a secret set, the hop header is believed
// only beside it: such a request is a client's.
func TestHopHeaderWithoutSecretIsAClients(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/hop", "1", 1, 64<<10)
	rs := startCluster(t, 2, up, sharedDir, nil, func(c *config.Config) { c.Cluster.SecretFile = secret })
	layer := img.Layers[0]
	o := owner(rs, layer)
	via := rs[0]
	if via == o {
		via = rs[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, _, body, err := get(ctx, via.url+"/v2/library/hop/blobs/"+layer, map[string]string{"Docker-Mirror-Forwarded": o.url})
	if err != nil || st != http.StatusOK || sha(body) != layer {
		t.Fatalf("GET blob: %d, %v", st, err)
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	for _, r := range rs {
		if err := r.hs.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := via.metric(t, "docker_mirror_cluster_served_for_peers_total", nil); n != 0 {
		t.Errorf("the replica the client asked counted %v requests served for peers, want 0", n)
	}
	if n := via.metric(t, "docker_mirror_cache_requests_total", map[string]string{"kind": "blob"}); n != 1 {
		t.Errorf("the replica the client asked counted %v blob answers, want 1", n)
	}
	if n := o.metric(t, "docker_mirror_cluster_served_for_peers_total", nil); n != 1 {
		t.Errorf("the blob's owner served %v requests for peers, want 1: the miss was not fetched through it", n)
	}
}
