package tests

import (
	"context"
	"net/http"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

var flavours = []struct {
	name string
	mt   fixture.MediaTypes
}{{"oci", fixture.OCI}, {"docker", fixture.Docker}}

// Pulls by tag and by digest return the upstream's exact bytes and digests,
// for OCI and Docker media types alike, under the short and long names.
func TestPullByTagAndDigest(t *testing.T) {
	for _, f := range flavours {
		t.Run(f.name, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			ma := up.SeedMultiArch(t, "library/multi", "v1", f.mt)
			m := servertest.Start(t, up.URL())

			for _, name := range []string{"multi", "library/multi"} {
				wantManifest(t, get(t, m.URL()+"/v2/"+name+"/manifests/v1"), ma.Index, ma.MediaType)
				wantManifest(t, get(t, m.URL()+"/v2/"+name+"/manifests/"+ma.Digest), ma.Index, ma.MediaType)
			}
			for platform, img := range ma.Platforms {
				t.Run(platform, func(t *testing.T) { wantImage(t, m, "multi", img) })
			}
			// go-containerregistry as the client: it resolves the index
			// to the platform and verifies every digest it reads.
			for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
				plat, _ := v1.ParsePlatform(p)
				if got := cranePull(t, ref(t, m, "multi:v1"), remote.WithPlatform(*plat)); got != ma.Platforms[p].Digest {
					t.Errorf("%s: pulled %s, want %s", p, got, ma.Platforms[p].Digest)
				}
			}
		})
	}
}

// Two tags on one digest, and a single-platform image.
func TestTwoTagsAndSinglePlatform(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/single", "1.0", 2, 8<<10)
	up.Tag(t, "library/single", img.Digest, "latest")
	m := servertest.Start(t, up.URL())

	for _, tag := range []string{"1.0", "latest"} {
		wantManifest(t, get(t, m.URL()+"/v2/single/manifests/"+tag), img.Manifest, img.MediaType)
	}
	if got := cranePull(t, ref(t, m, "single:latest")); got != img.Digest {
		t.Fatalf("pulled %s, want %s", got, img.Digest)
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 2 {
		t.Errorf("upstream manifest GETs = %d, want 2 (one per tag)", n)
	}
}

// After one linux/amd64 pull the background mirror stores every linux
// platform and their attestations; with the upstream stopped they pull,
// windows does not.
func TestBackgroundMirrorServesOtherPlatformsOffline(t *testing.T) {
	for _, f := range flavours {
		t.Run(f.name, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			ma := up.SeedMultiArch(t, "library/multi", "v1", f.mt)
			m := servertest.Start(t, up.URL())

			amd := v1.Platform{OS: "linux", Architecture: "amd64"}
			cranePull(t, ref(t, m, "multi:v1"), remote.WithPlatform(amd))
			m.WaitIdle()
			rec, ok, err := m.Index.Fill("docker.io", "library/multi", digestOf(t, ma.Digest))
			if err != nil || !ok || rec.State != storage.FillComplete {
				t.Fatalf("index mirror state = %+v %v %v, want complete", rec, ok, err)
			}
			if len(rec.Platforms) != 3 {
				t.Errorf("mirrored platforms %v, want the 3 linux ones", rec.Platforms)
			}
			for _, b := range ma.Platforms["windows/amd64"].Blobs() {
				if n := up.BlobBytesFor(b); n != 0 {
					t.Errorf("windows blob %s was fetched (%d bytes)", b, n)
				}
			}
			up.Stop()

			for _, p := range []string{"linux/arm64", "linux/arm/v7", "linux/amd64"} {
				wantImage(t, m, "multi", ma.Platforms[p])
			}
			for _, a := range ma.Attestations {
				img := a.Image
				wantImage(t, m, "multi", &img)
			}
			wantManifest(t, get(t, m.URL()+"/v2/multi/manifests/v1"), ma.Index, ma.MediaType)
			win := get(t, m.URL()+"/v2/multi/manifests/"+ma.Platforms["windows/amd64"].Digest)
			wantError(t, win, http.StatusServiceUnavailable, "UNAVAILABLE")
		})
	}
}

// A restarted mirror on the same data directory, with the upstream down,
// serves everything it had.
func TestRestartServesCachedWithUpstreamDown(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	img := up.SeedImage(t, "library/single", "1.0", 1, 4<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/multi/manifests/v1"), ma.Index, ma.MediaType)
	cranePull(t, ref(t, m, "single:1.0"))
	m.WaitIdle()

	up.Stop()
	m.Restart()
	m.Clock.Advance(24 * 60 * 60 * 1e9) // every tag is stale: revalidation fails, cache serves

	wantManifest(t, get(t, m.URL()+"/v2/multi/manifests/v1"), ma.Index, ma.MediaType)
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		wantImage(t, m, "multi", ma.Platforms[p])
	}
	if got := cranePull(t, ref(t, m, "single:1.0")); got != img.Digest {
		t.Fatalf("pulled %s, want %s", got, img.Digest)
	}
	r := get(t, m.URL()+"/v2/single/manifests/1.0")
	if r.header.Get("X-Cache") != "stale" {
		t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
	}
}

// 16 clients pulling one uncached image at once: the upstream sends each
// blob exactly once, and every client gets correct bytes.
func TestHerdFetchesEachBlobOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 3, 2<<20)
	// A slow link, so every client arrives while the downloads run.
	up.SetThrottle(fixture.Throttle{BytesPerSec: 16 << 20})
	m := servertest.Start(t, up.URL())

	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for range 16 {
		wg.Go(func() {
			if got := cranePull(t, ref(t, m, "herd:1")); got != img.Digest {
				errs <- got
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("a client pulled %s, want %s", e, img.Digest)
	}
	m.WaitIdle()
	var unique int64
	for _, b := range img.Blobs() {
		if n := blobGets(up, b); n > 1 {
			t.Errorf("blob %s fetched %d times", b, n)
		}
		n := up.BlobBytesFor(b)
		size, err := m.Store.Stat(context.Background(), "library/herd", digestOf(t, b))
		if err != nil {
			t.Fatal(err)
		}
		if n != size {
			t.Errorf("blob %s: upstream sent %d bytes, its size is %d", b, n, size)
		}
		unique += size
	}
	if total := up.BlobBytes(); total != unique {
		t.Errorf("upstream blob bytes %d, unique bytes %d", total, unique)
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", n)
	}
}
