package tests

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
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
// blob exactly once, and every client gets correct bytes. The upstream
// holds each blob's response (after its first byte) until the mirror has
// begun its answer to every client, so all 16 are certainly served while
// the one download runs.
func TestHerdFetchesEachBlobOnce(t *testing.T) {
	const clients = 16
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 3, 2<<20)
	m := servertest.Start(t, up.URL())
	gates := map[string]*fixture.Gate{}
	for _, b := range img.Blobs() {
		gates[b] = up.GateBlob(b, 1) // after the mirror: they open before it stops
	}
	front := startBlobFront(t, m, func(dgst string, n int) {
		if n == clients {
			gates[dgst].Open()
		}
	})

	var wg sync.WaitGroup
	errs := make(chan string, clients)
	for range clients {
		wg.Go(func() {
			if got := cranePull(t, front.ref(t, "herd:1")); got != img.Digest {
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
	for _, b := range img.Blobs() {
		select {
		case <-gates[b].Reached():
		default:
			t.Errorf("blob %s: the upstream's response was never held", b)
		}
		if n := front.count(b); n != clients {
			t.Errorf("blob %s: the mirror answered %d GETs, want %d, all while the download was held", b, n, clients)
		}
	}
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

// blobFront serves a mirror's handler on a server of its own that counts,
// per blob, the GETs the mirror has begun to answer 200 (its headers
// written, whether or not they have left yet), and tells started,
// serially, each time.
type blobFront struct {
	url     string
	started func(dgst string, n int)
	mu      sync.Mutex
	n       map[string]int
}

func startBlobFront(t *testing.T, m *servertest.Server, started func(dgst string, n int)) *blobFront {
	f := &blobFront{started: started, n: map[string]int{}}
	h := m.Proxy.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, dgst, blob := strings.Cut(r.URL.Path, "/blobs/")
		if !blob || r.Method != http.MethodGet {
			h.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(&headerHook{ResponseWriter: w, wrote: func(code int) {
			if code == http.StatusOK {
				f.mu.Lock()
				f.n[dgst]++
				f.started(dgst, f.n[dgst])
				f.mu.Unlock()
			}
		}}, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// ref parses a reference to the front, e.g. f.ref(t, "multi:v1").
func (f *blobFront) ref(t testing.TB, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(strings.TrimPrefix(f.url, "http://")+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// count is how many GETs of dgst the mirror has begun to answer 200.
func (f *blobFront) count(dgst string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[dgst]
}

// headerHook calls wrote with the status, once, as it is written.
type headerHook struct {
	http.ResponseWriter
	wrote func(code int)
	done  bool
}

func (h *headerHook) WriteHeader(code int) {
	if !h.done {
		h.done = true
		h.wrote(code)
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *headerHook) Write(p []byte) (int, error) {
	if !h.done {
		h.WriteHeader(http.StatusOK)
	}
	return h.ResponseWriter.Write(p)
}

func (h *headerHook) Flush() { http.NewResponseController(h.ResponseWriter).Flush() }

func (h *headerHook) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// awaitReached waits until the upstream holds the gated response of blob;
// should it never come, the deadline turns the hang into a failure.
func awaitReached(t *testing.T, g *fixture.Gate, blob string) {
	t.Helper()
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	select {
	case <-g.Reached():
	case <-deadline.C:
		t.Fatalf("the upstream was never asked for blob %s", blob)
	}
}
