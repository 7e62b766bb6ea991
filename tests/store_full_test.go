package tests

import (
	"context"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// fullStore is the embedded store on a disk that can be made full: while
// full is set, every write fails as the kernel fails it, with ENOSPC
// (EDQUOT with quota set), deep in the error chain, or as a full
// S3-compatible store refuses it with bucket set (MinIO's 507).
type fullStore struct {
	*storage.DriverStore
	full   atomic.Bool
	quota  atomic.Bool
	bucket atomic.Bool
	// held, while set, holds every blob write (Ingest) until it is
	// closed: the blobs a manifest miss fetches ahead may otherwise find
	// the disk full before the manifest is answered, and the store is
	// then known to be full when the test expects the first miss.
	held atomic.Pointer[chan struct{}]
}

// holdIngests holds every blob write until the returned func is called.
func (s *fullStore) holdIngests() (release func()) {
	c := make(chan struct{})
	s.held.Store(&c)
	return func() {
		s.held.Store(nil)
		close(c)
	}
}

func (s *fullStore) noSpace(op string) error {
	if s.bucket.Load() {
		return bucketFull{}
	}
	errno := syscall.ENOSPC
	if s.quota.Load() {
		errno = syscall.EDQUOT
	}
	return &fs.PathError{Op: op, Path: "/data/blobs/sha256/xx/data", Err: errno}
}

func (s *fullStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	if s.full.Load() {
		return s.noSpace("write")
	}
	return s.DriverStore.Put(ctx, repo, dgst, size, r)
}

func (s *fullStore) Ingest(ctx context.Context, repo string, dgst digest.Digest, size int64, path string) error {
	if c := s.held.Load(); c != nil {
		select {
		case <-*c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.full.Load() {
		return s.noSpace("sync")
	}
	return s.DriverStore.Ingest(ctx, repo, dgst, size, path)
}

// bucketFull is MinIO's refusal of a write once its drives are full, as
// the S3 SDK's awserr.RequestFailure gives it.
type bucketFull struct{}

func (bucketFull) Error() string {
	return "XMinioStorageFull: Storage backend has reached its minimum free drive threshold."
}
func (bucketFull) Code() string    { return "XMinioStorageFull" }
func (bucketFull) StatusCode() int { return http.StatusInsufficientStorage }

// newFullStore returns a fullStore on a filesystem store in a temporary
// directory, and the opener a test mirror takes.
func newFullStore(t *testing.T) (*fullStore, func(*storage.Index) (storage.Store, error)) {
	ds, err := storage.OpenDriverStore(t.Context(), "filesystem", map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s := &fullStore{DriverStore: ds}
	return s, func(*storage.Index) (storage.Store, error) { return s, nil }
}

func wantStoreFullGauge(t *testing.T, m *servertest.Server, want float64) {
	t.Helper()
	if got, ok := scrape(t, m)["docker_mirror_store_full"]; !ok || got != want {
		t.Fatalf("docker_mirror_store_full = %v (present %v), want %v", got, ok, want)
	}
}

// wantStoreFull checks the answer to a miss the store had no room for:
// 507 with an error that says so.
func wantStoreFull(t *testing.T, r response) {
	t.Helper()
	wantError(t, r, http.StatusInsufficientStorage, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "store is full") {
		t.Errorf("error does not say the store is full: %s", r.body)
	}
}

// On a full disk, a miss is answered 507 with an error that says the
// store is full (not 500 "internal error"), once a write found it full,
// what is cached is still served, the docker_mirror_store_full gauge is 1 until a write succeeds
// or space is freed, and /readyz says so but stays ready (by default).
func TestStoreFull(t *testing.T) {
	up := fixture.StartUpstream(t)
	cached := up.SeedImage(t, "team/cached", "v1", 2, 4<<10)
	fresh := up.SeedImage(t, "team/fresh", "v1", 2, 4<<10)
	store, open := newFullStore(t)
	// The disk's free space stays put: a write's ENOSPC is the store's.
	m := servertest.StartWithStore(t, up.URL(), open, proxy.WithFreeSpace(diskFree(new(atomic.Uint64), 1<<40)))
	wantImage(t, m, "team/cached", cached)
	wantManifest(t, get(t, m.URL()+"/v2/team/cached/manifests/v1"), cached.Manifest, cached.MediaType)
	m.WaitIdle()
	wantStoreFullGauge(t, m, 0)

	// The first manifest miss after the disk filled up is answered
	// before its write finds no space (the manifest is written after the
	// answer): the client has it, nothing is recorded, the failure is
	// counted, and the store is known to be full from then on.
	store.full.Store(true)
	failed := `docker_mirror_fill_duration_seconds_count{kind="manifest",result="error"}`
	release := store.holdIngests()
	wantManifest(t, get(t, m.URL()+"/v2/team/fresh/manifests/v1"), fresh.Manifest, fresh.MediaType)
	release()
	m.WaitIdle()
	if _, ok, err := m.Index.Tag("docker.io", "team/fresh", "v1"); err != nil || ok {
		t.Fatalf("tag recorded on a full store: %v %v", ok, err)
	}
	if n := scrape(t, m)[failed]; n != 1 {
		t.Errorf("%s = %v, want 1", failed, n)
	}
	wantStoreFullGauge(t, m, 1)

	for _, quota := range []bool{false, true} {
		store.full.Store(true)
		store.quota.Store(quota)
		// A manifest miss on a store known to be full: 507, nothing
		// recorded, and it cost the upstream one GET (a full store is
		// not a reason to ask more).
		gets := up.Count(http.MethodGet, fixture.KindManifest)
		wantStoreFull(t, get(t, m.URL()+"/v2/team/fresh/manifests/v1"))
		if n := up.Count(http.MethodGet, fixture.KindManifest) - gets; n != 1 {
			t.Errorf("a manifest miss on a full store made %d upstream GETs, want 1", n)
		}
		if _, ok, err := m.Index.Tag("docker.io", "team/fresh", "v1"); err != nil || ok {
			t.Fatalf("tag recorded on a full store: %v %v", ok, err)
		}
		wantStoreFullGauge(t, m, 1)
	}

	// Ready, and says the store is full.
	r := get(t, m.URL()+"/readyz")
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "store full") {
		t.Fatalf("/readyz: %d %q; want 200 saying store full", r.status, r.body)
	}
	// Hits are served.
	hit := get(t, m.URL()+"/v2/team/cached/manifests/v1")
	wantManifest(t, hit, cached.Manifest, cached.MediaType)
	if hit.header.Get("X-Cache") != "hit" {
		t.Errorf("X-Cache %q, want hit", hit.header.Get("X-Cache"))
	}
	for _, b := range cached.Blobs() {
		wantBlob(t, m, "team/cached", b)
	}
	// A blob miss the spool had room for is streamed through but not
	// kept; if the download ended before the client could read its spool
	// file, the answer is that the store is full. Never a 500, never a
	// body that is not the blob.
	layer := fresh.Layers[0]
	blobGetsBefore := blobGets(up, layer)
	if r := get(t, m.URL()+"/v2/team/fresh/blobs/"+layer); r.status == http.StatusOK {
		if r.err != nil || sha(r.body) != layer {
			t.Fatalf("blob miss on a full store: %v, body hashes to %s", r.err, sha(r.body))
		}
	} else {
		wantStoreFull(t, r)
	}
	m.WaitIdle()
	if n := blobGets(up, layer) - blobGetsBefore; n != 1 {
		t.Errorf("a blob miss on a full store made %d upstream GETs, want 1", n)
	}
	if _, err := m.Store.Stat(t.Context(), "docker.io/team/fresh", digestOf(t, layer)); err == nil {
		t.Fatal("blob stored on a full store")
	}
	wantStoreFullGauge(t, m, 1)

	// A write that succeeds again clears it.
	store.full.Store(false)
	wantManifest(t, get(t, m.URL()+"/v2/team/fresh/manifests/v1"), fresh.Manifest, fresh.MediaType)
	m.WaitIdle()
	wantStoreFullGauge(t, m, 0)
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusOK || strings.Contains(string(r.body), "full") {
		t.Fatalf("/readyz after space came back: %d %q", r.status, r.body)
	}

	// So does space freed by eviction.
	store.full.Store(true)
	other := up.SeedImage(t, "team/other", "v1", 1, 1<<10)
	release = store.holdIngests()
	wantManifest(t, get(t, m.URL()+"/v2/team/other/manifests/"+other.Digest), other.Manifest, other.MediaType)
	release()
	m.WaitIdle() // its write finds the disk full
	wantStoreFull(t, get(t, m.URL()+"/v2/team/other/manifests/"+other.Digest))
	wantStoreFullGauge(t, m, 1)
	c := lifecycle.New(store.DriverStore, m.Index, lifecycle.Options{Now: m.Clock.Now})
	rep, err := c.Evict(t.Context(), 1, 0, m.Clock.Now())
	if err != nil || rep.BytesFreed == 0 {
		t.Fatalf("eviction freed %d bytes: %v", rep.BytesFreed, err)
	}
	wantStoreFullGauge(t, m, 0)
}

// With readyz_fail_when_full, a full store takes the mirror out of
// readiness (so a load balancer sends pulls elsewhere) until a write
// succeeds again.
func TestStoreFullFailsReadiness(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	store, srv, hs := startFullStoreServer(t, up.URL(), diskFree(new(atomic.Uint64), 1<<40))

	if r := get(t, hs.URL+"/readyz"); r.status != http.StatusOK {
		t.Fatalf("/readyz: %d %s", r.status, r.body)
	}
	store.full.Store(true)
	// The first miss is answered before its write finds the disk full;
	// from then on the store is known to be full.
	release := store.holdIngests()
	wantManifest(t, get(t, hs.URL+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	release()
	if err := srv.Proxy.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantStoreFull(t, get(t, hs.URL+"/v2/team/app/manifests/v1"))
	r := get(t, hs.URL+"/readyz")
	wantError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "store full") {
		t.Errorf("/readyz body does not say store full: %s", r.body)
	}
	store.full.Store(false)
	wantManifest(t, get(t, hs.URL+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	if r := get(t, hs.URL+"/readyz"); r.status != http.StatusOK {
		t.Fatalf("/readyz after a write succeeded: %d %s", r.status, r.body)
	}
}

// startFullStoreServer starts the production wiring (server.New) with
// readyz_fail_when_full on a fullStore, mirroring the upstream at upURL,
// whose disk's free space freeSpace reads.
func startFullStoreServer(t *testing.T, upURL string, freeSpace func() (uint64, bool)) (*fullStore, *server.Server, *httptest.Server) {
	t.Helper()
	store, open := newFullStore(t)
	cfg := servertest.Config(t, t.TempDir(), []servertest.Upstream{{Host: "docker.io", URL: upURL}})
	cfg.ReadyzFailWhenFull = true
	srv, err := server.New(t.Context(), cfg, server.WithLogger(servertest.Logger()),
		server.WithProxyOptions(proxy.WithFreeSpace(freeSpace)),
		server.WithStore(func(context.Context, config.Config, *storage.Index) (storage.Store, string, error) {
			s, err := open(nil)
			return s, "full store", err
		}))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = srv.Proxy.WaitIdle(ctx)
		srv.Close()
	})
	return store, srv, hs
}

// diskFree sets free to n and returns a proxy.WithFreeSpace function
// that reads it: the disk's free space as the test sets it.
func diskFree(free *atomic.Uint64, n uint64) func() (uint64, bool) {
	free.Store(n)
	return func() (uint64, bool) { return free.Load(), true }
}

// A full disk is known without a write finding it: a mirror restarted on
// a full disk said ready (and docker_mirror_store_full 0) until its first
// write failed, and one out of rotation for being full
// (readyz_fail_when_full), whose disk an operator freed by hand, stayed
// out: no miss came to find the space, for ever.
func TestStoreFullKnownWithoutAWrite(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	var free atomic.Uint64
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL()}},
		func(c *config.Config) { c.ReadyzFailWhenFull = true },
		proxy.WithFreeSpace(diskFree(&free, 1<<30)))
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusOK || strings.Contains(string(r.body), "full") {
		t.Fatalf("/readyz with room: %d %q", r.status, r.body)
	}

	// Restarted on a disk filled meanwhile (by the index, the logs,
	// another program).
	free.Store(1 << 20)
	m.Restart()
	r := get(t, m.URL()+"/readyz")
	wantError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "store full") {
		t.Errorf("/readyz on a full disk after a restart: %q, want store full", r.body)
	}
	wantStoreFullGauge(t, m, 1)
	// Hits are still served.
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)

	// Freed by hand: ready again, with no write.
	free.Store(1 << 30)
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusOK || strings.Contains(string(r.body), "full") {
		t.Fatalf("/readyz once the disk has room: %d %q", r.status, r.body)
	}
	wantStoreFullGauge(t, m, 0)
}

// A write that found no space, on a disk with room for small writes but
// not that one (a layer larger than what is left), is forgotten once an
// operator frees space by hand, with no write: the mirror, out of
// rotation (readyz_fail_when_full), got no miss to find it.
func TestStoreFullForgottenOnceSpaceIsFreedByHand(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	var free atomic.Uint64
	store, srv, hs := startFullStoreServer(t, up.URL(), diskFree(&free, 200<<20))
	store.full.Store(true)
	release := store.holdIngests()
	wantManifest(t, get(t, hs.URL+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	release()
	if err := srv.Proxy.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	wantError(t, get(t, hs.URL+"/readyz"), http.StatusServiceUnavailable, "UNAVAILABLE")

	store.full.Store(false)
	free.Store(10 << 30) // a directory of old files removed
	if r := get(t, hs.URL+"/readyz"); r.status != http.StatusOK || strings.Contains(string(r.body), "full") {
		t.Fatalf("/readyz once space was freed by hand: %d %q", r.status, r.body)
	}
}

// A store's refusal that the disk's free space does not measure, a
// quota's (EDQUOT: the user's share of a disk with room) or an
// S3-compatible store's (the bucket is elsewhere; the disk measured is
// the data directory's), is not forgotten as that disk's free space
// grows: a spool file of a download removed, another program's files,
// made the mirror say it had room again (ready, docker_mirror_store_full
// 0) while every write to the store still failed.
func TestStoreFullNotForgottenByADiskItIsNotOf(t *testing.T) {
	for _, refusal := range []string{"quota", "bucket"} {
		t.Run(refusal, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
			store, open := newFullStore(t)
			var free atomic.Uint64
			m := servertest.StartWithStore(t, up.URL(), open, proxy.WithFreeSpace(diskFree(&free, 10<<30)))
			store.quota.Store(refusal == "quota")
			store.bucket.Store(refusal == "bucket")
			store.full.Store(true)
			release := store.holdIngests()
			wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
			release()
			m.WaitIdle()
			wantStoreFullGauge(t, m, 1)

			free.Store(20 << 30) // the disk measured has more room
			wantStoreFullGauge(t, m, 1)
			if r := get(t, m.URL()+"/readyz"); !strings.Contains(string(r.body), "store full") {
				t.Errorf("/readyz with the store still refusing for want of room (%s): %d %q, want store full", refusal, r.status, r.body)
			}
		})
	}
}
