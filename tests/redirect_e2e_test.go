//go:build e2e

package tests

import (
	"strconv"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/clients"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// crane pulls through a mirror that redirects blob GETs to presigned URLs
// of its S3 bucket: the pull of a warm image, with the upstream down,
// follows the redirects and gets every byte right.
func TestCraneFollowsBlobRedirects(t *testing.T) {
	clients.CraneBin(t)
	_, _, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/app", "v1", fixture.OCI)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, func(c *config.Config) {
		onBucket(c)
		c.StorageRedirect = true
	})
	ref := m.Host() + "/library/app:v1"
	if got := clients.CranePull(t, ref, "linux/arm64"); got != ma.Platforms["linux/arm64"].Digest {
		t.Fatalf("cold pull: %s; want %s", got, ma.Platforms["linux/arm64"].Digest)
	}
	m.WaitIdle()
	up.Stop()
	before, _ := strconv.Atoi(redirectMetric(t, m))
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		if got := clients.CranePull(t, ref, p); got != ma.Platforms[p].Digest {
			t.Fatalf("warm pull of %s: %s; want %s", p, got, ma.Platforms[p].Digest)
		}
	}
	after, _ := strconv.Atoi(redirectMetric(t, m))
	// Each pull fetches the config and the layers: all redirected.
	want := 0
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		want += len(ma.BlobsFor(p))
	}
	if after-before < want {
		t.Errorf("%d blob redirects for the warm pulls; want at least %d", after-before, want)
	}
}
