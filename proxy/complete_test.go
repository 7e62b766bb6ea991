package proxy

import (
	"net/http"
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
