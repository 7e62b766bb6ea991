//go:build clients

package clients

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/mirrortest"
)

// TestThroughMirror pulls with every client through a real docker-mirror
// (in-process, tests/mirrortest) whose upstream is a stand-in registry, and
// checks that each client reports the upstream's digests.
func TestThroughMirror(t *testing.T) {
	up := StartStandIn(t)
	im := seedAll(t, up)
	up.Log.Reset()
	m := mirrortest.Start(t, up.URL)
	mirror := m.Host()
	t.Logf("docker-mirror at %s, upstream stand-in at %s", mirror, up.Addr)
	// upstreamLog waits for the mirror's background work and logs what the
	// upstream received. (Not m.WaitIdle: it fails the parent test, which a
	// subtest must not do.)
	upstreamLog := func(t *testing.T, what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := m.Proxy.WaitIdle(ctx); err != nil {
			t.Errorf("docker-mirror background work did not finish: %v", err)
		}
		t.Logf("%s: upstream received:\n%s", what, Dump(up.Log.Requests()))
		up.Log.Reset()
	}

	t.Run("docker", func(t *testing.T) {
		RequireRoot(t)
		RequireBinary(t, "dockerd")
		d := StartDockerd(t, mirror)
		expectEqual(t, "mirror pull digest", d.Pull(t, "hello-oci", ""), im.oci.Index)
		expectEqual(t, "image ID", d.ImageID(t, "hello-oci"), im.oci.Configs[hostPlatform()])
		upstreamLog(t, "docker pull hello-oci")
		expectEqual(t, "mirror pull arm64 digest", d.Pull(t, "library/hello-docker:v1", "linux/arm64"), im.docker.Index)
		expectEqual(t, "arm64 image ID", d.ImageID(t, "library/hello-docker:v1"), im.docker.Configs["linux/arm64"])
		upstreamLog(t, "docker pull --platform linux/arm64 hello-docker:v1")
		ref := mirror + "/library/hello-arm:latest"
		expectEqual(t, "direct pull digest", d.Pull(t, ref, "linux/arm64"), im.arm.Index)
		upstreamLog(t, "docker pull --platform linux/arm64 "+ref)
	})

	t.Run("containerd", func(t *testing.T) {
		RequireRoot(t)
		RequireBinary(t, "containerd")
		c := StartContainerd(t, mirror)
		expectEqual(t, "digest", c.Pull(t, "docker.io/library/hello-oci:latest", ""), im.oci.Index)
		expectEqual(t, "arm64 digest", c.Pull(t, "docker.io/library/hello-arm:latest", "linux/arm64"), im.arm.Index)
		expectEqual(t, "all platforms digest", c.Pull(t, "docker.io/library/hello-docker:v1", "all"), im.docker.Index)
		expectEqual(t, "direct digest", c.Pull(t, mirror+"/library/hello-direct:latest", "", "--plain-http"), im.direct.Index)
		upstreamLog(t, "ctr pulls")
	})

	t.Run("podman", func(t *testing.T) {
		RequireRoot(t)
		RequireBinary(t, "podman")
		p := NewPodman(t, mirror)
		expectEqual(t, "digest", p.Pull(t, "docker.io/library/hello-oci:latest", ""), im.oci.Index)
		expectEqual(t, "arm64 digest", p.Pull(t, "docker.io/library/hello-arm:latest", "arm64"), im.arm.Index)
		expectEqual(t, "arch", p.Inspect(t, "docker.io/library/hello-arm:latest").Architecture, "arm64")
		expectEqual(t, "direct digest", p.Pull(t, mirror+"/library/hello-direct:latest", "", "--tls-verify=false"), im.direct.Index)
		upstreamLog(t, "podman pulls")
	})

	t.Run("skopeo", func(t *testing.T) {
		RequireBinary(t, "skopeo")
		expectEqual(t, "copy --all oci: digest", SkopeoCopyAll(t, mirror+"/library/hello-oci:latest"), im.oci.Index)
		expectEqual(t, "copy --all dir: digest", SkopeoCopyAllDir(t, mirror+"/library/hello-docker:v1"), im.docker.Index)
		expectEqual(t, "inspect --raw digest", SkopeoInspectRaw(t, mirror+"/library/hello-arm:latest"), im.arm.Index)
		upstreamLog(t, "skopeo")
	})

	t.Run("crane", func(t *testing.T) {
		CraneBin(t)
		ref := mirror + "/library/hello-direct:latest"
		expectEqual(t, "digest", CraneDigest(t, ref, ""), im.direct.Index)
		expectEqual(t, "arm64 digest", CraneDigest(t, ref, "linux/arm64"), im.direct.Platforms["linux/arm64"])
		expectEqual(t, "pull digest", CranePull(t, ref, ""), im.direct.Index)
		expectEqual(t, "pull host platform digest", CranePull(t, ref, "linux/"+runtime.GOARCH), im.direct.Platforms[hostPlatform()])
		upstreamLog(t, "crane")
	})
}
