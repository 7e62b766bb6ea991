package status_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The page of a Docker schema 1 image (an old registry's) shows its
// stored layers' sizes: its manifest declares none (fsLayers name a
// blobSum only), and the page showed "0 B" for every layer.
func TestImageDetailSchema1LayerSizes(t *testing.T) {
	layers := [][]byte{[]byte("schema 1 layer one, the longer"), []byte("schema 1 layer two")}
	var sums []string
	for _, l := range layers {
		sums = append(sums, `{"blobSum":"`+digest.FromBytes(l).String()+`"}`)
	}
	manifest := []byte(`{"schemaVersion":1,"name":"library/old","tag":"v1","architecture":"amd64","fsLayers":[` + strings.Join(sums, ",") +
		`],"history":[{"v1Compatibility":"{}"},{"v1Compatibility":"{}"}]}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
			return
		case "/v2/library/old/manifests/v1", "/v2/library/old/manifests/" + digest.FromBytes(manifest).String():
			w.Header().Set("Content-Type", oci.MediaTypeDockerSchema1)
			_, _ = w.Write(manifest)
			return
		}
		for _, l := range layers {
			if r.URL.Path == "/v2/library/old/blobs/"+digest.FromBytes(l).String() {
				_, _ = w.Write(l)
				return
			}
		}
		http.NotFound(w, r)
	}))
	defer up.Close()
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
