package cluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
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

// TestSharedDiskUpgradeKeepsRecordedImages: a mirror on a filesystem
// store, its records in its index only, is made a replica of a cluster on
// that store (as a shared disk's replicas of a version that did not share
// them are upgraded): its first collection, hours later, keeps every
// image it recorded, and serves it with the upstream down.
func TestSharedDiskUpgradeKeepsRecordedImages(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/old", "v1", 2, 64<<10)
	clock := servertest.NewClock()
	rs := startClusterWith(t, 1, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now)}
	}, func(c *config.Config) { c.Cluster = config.Cluster{} })
	r := rs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pullImage(ctx, r.url, "library/old", "v1", img); err != nil {
		t.Fatal(err)
	}
	r.waitIdle(t)
	r.cfg.Cluster = config.Cluster{Self: r.url, Peers: []string{r.url}}
	r.restart(t)
	clock.Advance(3 * time.Hour)
	if _, err := r.srv.Collector.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	up.Stop()
	if err := pullImage(ctx, r.url, "library/old", "v1", img); err != nil {
		t.Errorf("upstream down: %v", err)
	}
}

// TestSharedDiskEmptyReplicaServesWhatAnotherFetched: two replicas on one
// filesystem store; one pulls an image, the upstream goes down, the other
// comes back with an empty data directory (an emptyDir), and the first
// dies. The one left serves the image whole from the records the first
// wrote beside the content, as on a bucket.
func TestSharedDiskEmptyReplicaServesWhatAnotherFetched(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/empty", "v1", 2, 64<<10)
	rs := startCluster(t, 2, up, sharedDir, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pullImage(ctx, rs[0].url, "library/empty", "v1", img); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	up.Stop()
	rs[1].restartEmpty(t)
	rs[0].kill()
	if err := pullImage(ctx, rs[1].url, "library/empty", "v1", img); err != nil {
		t.Errorf("upstream down, the other replica gone: %v", err)
	}
}

// TestSharedDiskRejoinKeepsWhatItPulledAlone: a replica on a shared disk
// (its records written there once) run a while as a single mirror on the
// same store, pulling an image (recorded in its index only, a single
// mirror shares nothing), then made a replica again: its first
// collection, hours later, keeps that image, and serves it with the
// upstream down.
func TestSharedDiskRejoinKeepsWhatItPulledAlone(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/alone", "v1", 2, 64<<10)
	clock := servertest.NewClock()
	rs := startClusterWith(t, 1, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now)}
	})
	r := rs[0]
	cluster := r.cfg.Cluster
	r.cfg.Cluster = config.Cluster{}
	r.restart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pullImage(ctx, r.url, "library/alone", "v1", img); err != nil {
		t.Fatal(err)
	}
	r.waitIdle(t)
	r.cfg.Cluster = cluster
	r.restart(t)
	clock.Advance(3 * time.Hour)
	if _, err := r.srv.Collector.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	up.Stop()
	if err := pullImage(ctx, r.url, "library/alone", "v1", img); err != nil {
		t.Errorf("upstream down: %v", err)
	}
}

// TestSharedDiskMovedKeepsRecordedImages: a replica on a shared disk (its
// records written there) moved to another shared disk its content was
// copied to, records left behind (blobs/ alone copied): its first
// collection there, hours later, keeps every image it recorded, and
// serves it with the upstream down. Its records are written to the new
// store as to the first.
func TestSharedDiskMovedKeepsRecordedImages(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/moved", "v1", 2, 64<<10)
	clock := servertest.NewClock()
	rs := startClusterWith(t, 1, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now)}
	})
	r := rs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pullImage(ctx, r.url, "library/moved", "v1", img); err != nil {
		t.Fatal(err)
	}
	r.waitIdle(t)
	r.kill()
	from := r.cfg.Storage["filesystem"]["rootdirectory"].(string)
	to := t.TempDir()
	if err := os.CopyFS(filepath.Join(to, "blobs"), os.DirFS(filepath.Join(from, "blobs"))); err != nil {
		t.Fatal(err)
	}
	r.cfg.Storage = map[string]map[string]any{"filesystem": {"rootdirectory": to}}
	r.restart(t)
	clock.Advance(3 * time.Hour)
	if _, err := r.srv.Collector.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	up.Stop()
	if err := pullImage(ctx, r.url, "library/moved", "v1", img); err != nil {
		t.Errorf("upstream down: %v", err)
	}
}
