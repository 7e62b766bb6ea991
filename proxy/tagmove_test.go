package proxy

import (
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A tag revalidated after it moved upstream to an image the mirror holds
// for the repository already (alias tags moving together: latest and 1.27
// to one new image; a tag moved back to an older image still cached) is
// answered with the held bytes and recorded there without a GET of the
// manifest, which Docker Hub counts against its pull limit (a HEAD it
// does not): the revalidation's HEAD is the only request of the tag.
func TestTagMovedToHeldImageNotFetched(t *testing.T) {
	f := newWritesFixture(t)
	const repo = "library/app"
	// Both move to a new image; latest is pulled first, and fetched.
	old, next := aliasTagsMoved(t, f, repo)
	f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/latest", next.Manifest, next.MediaType, "miss")
	f.waitIdle(t)
	movedTo := func(tag string, img *fixture.Image) {
		t.Helper()
		f.up.ResetCounts()
		f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/"+tag, img.Manifest, img.MediaType, "revalidated")
		f.waitIdle(t)
		// (The fill's lookups of the image's signatures are HEADs too.)
		if n, g := f.manifestRequests(repo, tag), f.up.Count(http.MethodGet, fixture.KindManifest); n != 1 || g != 0 {
			t.Errorf("%s moved to an image held: %d requests of the tag and %d manifest GETs upstream, want 1 (the HEAD) and 0: %+v", tag, n, g, f.up.Requests())
		}
		rec, ok, err := f.index.Tag(DefaultHost, repo, tag)
		if err != nil || !ok || rec.Digest != digest.Digest(img.Digest) {
			t.Fatalf("tag %s recorded as %+v %v %v, want %s", tag, rec, ok, err, img.Digest)
		}
		if mt, size, known := rec.Manifest(); !known || mt != img.MediaType || size != int64(len(img.Manifest)) {
			t.Errorf("tag %s's record holds %q, %d, want %q, %d", tag, mt, size, img.MediaType, len(img.Manifest))
		}
		// Recorded: fresh for the TTL, a hit without asking the upstream.
		f.p.tagTTL = time.Hour
		f.up.ResetCounts()
		f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/"+tag, img.Manifest, img.MediaType, "hit")
		if n := f.up.Count("", fixture.KindManifest); n != 0 {
			t.Errorf("%s after its move was recorded: %d manifest requests upstream, want 0", tag, n)
		}
		f.p.tagTTL = 0
	}
	// The alias follows, to the image latest's pull holds.
	movedTo("1.27", next)
	// And back to the older image, still cached.
	f.up.Tag(t, repo, old.Digest, "1.27")
	movedTo("1.27", old)
}

// A tag that moved to an image held but not mirrored completely (a blob
// gone, its fill partial) still has that image filled: its missing blob is
// fetched, though its manifest is not.
func TestTagMovedToHeldPartialImageFills(t *testing.T) {
	f := newWritesFixture(t)
	const repo = "library/app"
	a := f.up.SeedImage(t, repo, "a", 1, 1<<10)
	b := f.up.SeedImage(t, repo, "b", 1, 1<<10)
	for _, img := range []*fixture.Image{a, b} {
		f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/"+img.Digest, img.Manifest, img.MediaType, "miss")
		f.waitIdle(t)
	}
	f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/a", a.Manifest, a.MediaType, "")
	f.waitIdle(t)
	// b's layer is lost, and its fill recorded partial, as the
	// verification leaves them.
	layer := digest.Digest(b.Layers[0])
	if _, err := f.index.Forget([]digest.Digest{layer}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Delete(t.Context(), repo, layer); err != nil {
		t.Fatal(err)
	}
	if err := f.index.PutFill(digest.Digest(b.Digest), storage.FillRecord{Upstream: DefaultHost, Repo: repo, State: storage.FillPartial, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	f.p.tagTTL = 0
	f.up.Tag(t, repo, b.Digest, "a")
	f.up.ResetCounts()
	f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/a", b.Manifest, b.MediaType, "")
	f.waitIdle(t)
	if n := f.up.Count(http.MethodGet, fixture.KindManifest); n != 0 {
		t.Errorf("%d manifest GETs upstream, want 0: %+v", n, f.up.Requests())
	}
	if n := f.up.BlobBytesFor(layer.String()); n == 0 {
		t.Errorf("the held image's missing layer was not fetched: %+v", f.up.Requests())
	}
	if rec, ok, err := f.index.Fill(DefaultHost, repo, digest.Digest(b.Digest)); err != nil || !ok || rec.State != storage.FillComplete {
		t.Fatalf("fill of the image the tag moved to: %+v %v %v, want complete\n%s", rec, ok, err, f.logs.String())
	}
	if rec, ok, err := f.index.Tag(DefaultHost, repo, "a"); err != nil || !ok || rec.Digest != digest.Digest(b.Digest) {
		t.Fatalf("tag a recorded as %+v %v %v, want %s", rec, ok, err, b.Digest)
	}
}

// A copy (prefetch, sync, mirror) of a tag that moved upstream to an image
// the mirror holds for the repository takes it from the store, as a pull
// does: a sync of tags asks the upstream for their HEADs, not for a GET of
// a manifest it holds.
func TestCopyOfTagMovedToHeldImageNotFetched(t *testing.T) {
	f := newWritesFixture(t)
	const repo = "library/app"
	f.up.SeedImage(t, repo, "a", 1, 1<<10)
	b := f.up.SeedImage(t, repo, "b", 1, 1<<10)
	for _, ref := range []string{"app:a", "app:b"} {
		if _, err := f.p.Copy(t.Context(), ref, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	f.waitIdle(t)
	f.up.Tag(t, repo, b.Digest, "a")
	f.up.ResetCounts()
	prog, err := f.p.Copy(t.Context(), "app:a", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.waitIdle(t)
	if prog.Digest != b.Digest {
		t.Errorf("copied %s, want %s", prog.Digest, b.Digest)
	}
	if n, g := f.manifestRequests(repo, "a"), f.up.Count(http.MethodGet, fixture.KindManifest); n != 1 || g != 0 {
		t.Errorf("copy of a tag moved to an image held: %d requests of the tag and %d manifest GETs upstream, want 1 (the HEAD) and 0: %+v", n, g, f.up.Requests())
	}
	if rec, ok, err := f.index.Tag(DefaultHost, repo, "a"); err != nil || !ok || rec.Digest != digest.Digest(b.Digest) {
		t.Fatalf("tag a recorded as %+v %v %v, want %s", rec, ok, err, b.Digest)
	}
}

// Alias tags (latest and 1.27) that moved together upstream to an image
// the mirror does not hold, pulled one just after the other: the second
// finds the image being written (answered, not yet recorded) by the
// first's fetch, and takes it once recorded, without a GET of its own
// (another pull Docker Hub counts).
func TestAliasTagMovedToImageBeingWrittenNotFetchedAgain(t *testing.T) {
	f := newWritesFixture(t)
	const repo = "library/app"
	_, next := aliasTagsMoved(t, f, repo)
	g := f.store.gate(next.Digest)
	f.up.ResetCounts()
	f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/latest", next.Manifest, next.MediaType, "miss")
	recv(t, g.reached, "latest's write")
	w := f.p.writes.get(manifestKey(target{up: f.p.upstreams[DefaultHost], repo: repo}, oci.Ref{Digest: digest.Digest(next.Digest)}))
	if w == nil {
		t.Fatal("the image latest moved to is not listed as being written")
	}
	pulled := make(chan struct{})
	go func() {
		defer close(pulled)
		f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/1.27", next.Manifest, next.MediaType, "revalidated")
	}()
	// Either it waits for the write, or (the fault) it fetched the
	// image again and was answered.
	select {
	case <-w.waited:
	case <-pulled:
	case <-time.After(time.Minute):
		t.Fatal("1.27's pull neither waited for the write nor ended") // fail, not hang
	}
	g.release <- nil
	recv(t, pulled, "1.27's answer")
	f.waitIdle(t)
	if n := f.up.Count(http.MethodGet, fixture.KindManifest); n != 1 {
		t.Errorf("the image both tags moved to was fetched with %d manifest GETs, want 1: %+v", n, f.up.Requests())
	}
	for _, tag := range []string{"latest", "1.27"} {
		if rec, ok, err := f.index.Tag(DefaultHost, repo, tag); err != nil || !ok || rec.Digest != digest.Digest(next.Digest) {
			t.Errorf("tag %s recorded as %+v %v %v, want %s", tag, rec, ok, err, next.Digest)
		}
	}
}

// aliasTagsMoved has the mirror hold latest and 1.27 of repo, pulled while
// they pointed to one image, old; then both move upstream to a new image,
// next, not held, and go stale (tag TTL 0).
func aliasTagsMoved(t *testing.T, f *writesFixture, repo string) (old, next *fixture.Image) {
	t.Helper()
	old = f.up.SeedImage(t, repo, "latest", 1, 1<<10)
	f.up.Tag(t, repo, old.Digest, "1.27")
	for _, tag := range []string{"latest", "1.27"} {
		f.request(t, http.MethodGet, "/v2/"+repo+"/manifests/"+tag, old.Manifest, old.MediaType, "miss")
		f.waitIdle(t)
	}
	f.p.tagTTL = 0
	next = f.up.SeedImage(t, repo, "latest", 1, 1<<10)
	f.up.Tag(t, repo, next.Digest, "1.27")
	return old, next
}
