package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A manifest hit of an image mirrored completely (its fill record says
// so) fetches nothing ahead: every blob it names is stored, and checking
// each in the index cost every hit three more lookups. Shown with a
// layer whose record is dropped after the fill: the fetch-ahead would
// fetch it again on the hit; only the client's own request for it does.
func TestCompleteImageHitFetchesNothingAhead(t *testing.T) {
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	f.waitIdle(t)
	if rec, ok, err := f.index.Fill(DefaultHost, "library/app", digest.Digest(img.Digest)); err != nil || !ok || rec.State != storage.FillComplete {
		t.Fatalf("fill record after the first pull: %+v %v %v", rec, ok, err)
	}
	layer := digest.Digest(img.Layers[0])
	if _, err := f.index.Forget([]digest.Digest{layer}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Delete(t.Context(), "library/app", layer); err != nil {
		t.Fatal(err)
	}
	blobGETs := func() int {
		n := 0
		for _, r := range f.up.Requests() {
			if r.Kind == fixture.KindBlob && r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/blobs/"+layer.String()) {
				n++
			}
		}
		return n
	}
	before := blobGETs()

	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "hit")
	f.request(t, http.MethodGet, "/v2/library/app/manifests/"+img.Digest, img.Manifest, img.MediaType, "hit")
	f.waitIdle(t)
	if n := blobGETs() - before; n != 0 {
		t.Errorf("the upstream was asked for a layer %d times after hits of a complete image, want 0", n)
	}
}

// flushSpy is a ResponseWriter that calls onFlush when the handler
// flushes its answer to the client.
type flushSpy struct {
	*httptest.ResponseRecorder
	onFlush func()
	flushed int
}

func (s *flushSpy) Flush() {
	s.flushed++
	s.onFlush()
	s.ResponseRecorder.Flush()
}

// partialImage mirrors library/app:v1 and then marks its fill partial, as
// a fill cut off before the end leaves it.
func partialImage(t *testing.T) (*writesFixture, *fixture.Image, digest.Digest) {
	t.Helper()
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	f.waitIdle(t)
	d := digest.Digest(img.Digest)
	if err := f.index.PutFill(d, storage.FillRecord{Upstream: DefaultHost, Repo: "library/app", State: storage.FillPartial}); err != nil {
		t.Fatal(err)
	}
	return f, img, d
}

// A manifest hit is answered (flushed to the client, whole) before its
// fill is checked: the check is an index lookup, a page fault at 100k
// images, and resuming a partial fill is background work. Shown with an
// image whose fill record says partial: no fill runs when the answer is
// flushed, and one runs and completes it after.
func TestManifestHitAnsweredBeforeItsFillIsChecked(t *testing.T) {
	f, img, d := partialImage(t)
	key := fillKey(target{up: f.p.upstreams[DefaultHost], repo: "library/app"}, d)
	for _, path := range []string{"/v2/library/app/manifests/v1", "/v2/library/app/manifests/" + img.Digest} {
		spy := &flushSpy{ResponseRecorder: httptest.NewRecorder()}
		spy.onFlush = func() {
			if f.p.fills.running(key) {
				t.Errorf("GET %s: the fill was resumed before the answer was flushed", path)
			}
			if got := spy.Body.String(); got != string(img.Manifest) {
				t.Errorf("GET %s: flushed %q, want the whole manifest", path, got)
			}
		}
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil)
		req.Header.Set("Accept", img.MediaType)
		f.p.Handler().ServeHTTP(spy, req)
		if spy.Code != http.StatusOK || spy.flushed == 0 {
			t.Fatalf("GET %s: %d, flushed %d times", path, spy.Code, spy.flushed)
		}
		f.waitIdle(t)
		if rec, ok, err := f.index.Fill(DefaultHost, "library/app", d); err != nil || !ok || rec.State != storage.FillComplete {
			t.Fatalf("GET %s: fill record after: %+v %v %v, want the fill resumed and complete", path, rec, ok, err)
		}
		if err := f.index.PutFill(d, storage.FillRecord{Upstream: DefaultHost, Repo: "library/app", State: storage.FillPartial}); err != nil {
			t.Fatal(err)
		}
	}
}

// A manifest hit's handler returns without waiting for its fill's check:
// the client's next request on the connection is read only once it has
// returned. Shown with the fill queue locked, so that the check cannot
// run: the handler returns all the same, and once the queue is unlocked
// the partial fill is resumed and completed.
func TestManifestHitReturnsBeforeItsFillIsChecked(t *testing.T) {
	f, img, d := partialImage(t)
	f.p.fills.mu.Lock()
	rec := httptest.NewRecorder()
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
		req.Header.Set("Accept", img.MediaType)
		f.p.Handler().ServeHTTP(rec, req)
	}()
	recv(t, returned, "the handler to return while its fill's check waits")
	f.p.fills.mu.Unlock()
	if rec.Code != http.StatusOK || rec.Body.String() != string(img.Manifest) {
		t.Fatalf("GET by tag: %d %q", rec.Code, rec.Body.String())
	}
	f.waitIdle(t)
	if got, ok, err := f.index.Fill(DefaultHost, "library/app", d); err != nil || !ok || got.State != storage.FillComplete {
		t.Fatalf("fill record after: %+v %v %v, want the fill resumed and complete", got, ok, err)
	}
}
