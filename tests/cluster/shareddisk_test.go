package cluster_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// TestSharedDiskCollectionKeepsAnotherReplicasImage: two replicas on one
// filesystem store (a shared disk); one pulls an image, a layer of which
// the other owns, and hours later pulls it again. Every replica's
// collection then keeps it: each reads what the other recorded, as on a
// bucket, and removes nothing the other serves. With the upstream down,
// both replicas serve it whole.
func TestSharedDiskCollectionKeepsAnotherReplicasImage(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/idle", "v1", 2, 64<<10)
	clock := servertest.NewClock()
	rs := startClusterWith(t, 2, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A tag the layer's owner does not own, pulled through its owner: the
	// layer's owner fetches the layer, and knows of no image that needs it.
	layerOwner, tag := owner(rs, img.Layers[0]), "v1"
	for i := 2; owner(rs, "docker.io/library/idle:"+tag) == layerOwner; i++ {
		tag = fmt.Sprintf("v%d", i)
	}
	up.Tag(t, "library/idle", img.Digest, tag)
	puller := owner(rs, "docker.io/library/idle:"+tag)
	if err := pullImage(ctx, puller.url, "library/idle", tag, img); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	clock.Advance(3 * time.Hour)
	if err := pullImage(ctx, puller.url, "library/idle", tag, img); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if _, err := r.srv.Collector.Collect(ctx); err != nil {
			t.Fatalf("replica %d: collect: %v", i, err)
		}
	}
	up.Stop()
	for i, r := range rs {
		if err := pullImage(ctx, r.url, "library/idle", tag, img); err != nil {
			t.Errorf("replica %d, upstream down: %v", i, err)
		}
	}
}
