//go:build e2e

// These tests run on a real S3 server (versitygw): the shared records in
// the bucket let a replica serve what another fetched.

package cluster_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestEmptyReplicaServesWhatOthersFetched: three replicas on one bucket
// pull an image between them; the upstream goes down; one replica comes
// back with an empty data directory, and another dies. Every linux
// platform of the image is still served, byte for byte, through the new
// replica and through the one left.
func TestEmptyReplicaServesWhatOthersFetched(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedMultiArch(t, "library/rec", "v1", fixture.OCI, fixture.WithLayerSize(64<<10))
	rs := startCluster(t, 3, up, bucket, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, p := range []string{"linux/amd64", "linux/arm64"} {
		if err := pull(ctx, rs[i].url, "library/rec", "v1", p, img.Platforms[p].Config, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	up.Stop()
	rs[2].restartEmpty(t)
	rs[0].kill()
	for _, r := range rs[1:] {
		for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
			im := img.Platforms[p]
			st, _, raw, err := get(ctx, r.url+"/v2/library/rec/manifests/"+im.Digest, nil)
			if err != nil || st != http.StatusOK || sha(raw) != im.Digest {
				t.Errorf("%s: %s manifest: status %d, err %v", r.url, p, st, err)
				continue
			}
			for _, b := range im.Blobs() {
				wantBlob(t, r.url, "library/rec", b)
			}
		}
		st, _, raw, err := get(ctx, r.url+"/v2/library/rec/manifests/v1", nil)
		if err != nil || st != http.StatusOK || sha(raw) != img.Digest {
			t.Errorf("%s: tag v1: status %d, err %v", r.url, st, err)
		}
	}
}
