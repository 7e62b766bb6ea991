package status_test

import (
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The page of a Docker schema 1 image (an old registry's) shows its
// stored layers' sizes: its manifest declares none (fsLayers name a
// blobSum only), and the page showed "0 B" for every layer.
func TestImageDetailSchema1LayerSizes(t *testing.T) {
	up := fixture.StartSchema1Upstream(t)
	layers := up.Layers
	m := servertest.Start(t, up.URL)
	pull := func(path string) {
		t.Helper()
		if a := send(t, http.MethodGet, m.URL()+path, "", map[string]string{"Accept": oci.MediaTypeDockerSchema1}); a.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, a.status, a.body)
		}
	}
	pull("/v2/library/old/manifests/v1")
	for _, l := range layers {
		pull("/v2/library/old/blobs/" + digest.FromBytes(l).String())
	}
	m.WaitIdle()

	d := getJSON[status.Detail](t, m.URL()+"/api/v1/images/docker.io/library/old", nil)
	if len(d.Images) != 1 || len(d.Images[0].Blobs) != len(layers) {
		t.Fatalf("detail %+v; want one image of %d layers", d, len(layers))
	}
	for i, b := range d.Images[0].Blobs {
		if want := int64(len(layers[i])); !b.Stored || b.Digest != digest.FromBytes(layers[i]) || b.Size != want {
			t.Errorf("layer %d: %+v; want %s stored, of %d bytes", i, b, digest.FromBytes(layers[i]), want)
		}
	}
}
