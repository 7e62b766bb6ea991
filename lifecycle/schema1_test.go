package lifecycle_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A Docker schema 1 image (an old registry's) is listed with its
// platform, which its manifest names (architecture; schema 1 images are
// Linux's): it has no config to read it from, and ls and the status page
// showed none ("-").
func TestImagesSchema1Platform(t *testing.T) {
	layer := []byte("schema 1 layer")
	manifest := []byte(`{"schemaVersion":1,"name":"library/old","tag":"v1","architecture":"arm64","fsLayers":[{"blobSum":"` +
		digest.FromBytes(layer).String() + `"}],"history":[{"v1Compatibility":"{}"}]}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case r.URL.Path == "/v2/library/old/manifests/v1", r.URL.Path == "/v2/library/old/manifests/"+digest.FromBytes(manifest).String():
			w.Header().Set("Content-Type", oci.MediaTypeDockerSchema1)
			_, _ = w.Write(manifest)
		case r.URL.Path == "/v2/library/old/blobs/"+digest.FromBytes(layer).String():
			_, _ = w.Write(layer)
		default:
			http.NotFound(w, r)
		}
	}))
	defer up.Close()
	m := servertest.StartWithStore(t, up.URL, func(ix *storage.Index) (storage.Store, error) {
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Dir(ix.Path())})
	})
	e := &env{m: m, store: m.Store.(*storage.DriverStore)}
	d := digest.FromBytes(manifest).String()
	e.pull(t, image{repo: "old", tag: "v1", digest: d})
	im := findImage(t, images(t, e.collector(lifecycle.Options{})), d)
	if !slices.Equal(im.Platforms, []string{"linux/arm64"}) || im.Blobs != 1 {
		t.Errorf("schema 1 image = %+v; want platform linux/arm64, its layer stored", im)
	}
}
