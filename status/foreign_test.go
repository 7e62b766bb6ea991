package status_test

import (
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The page of an image with a foreign layer (a Windows base layer, with
// URLs: clients fetch it from its own hosts, and the mirror leaves it
// there) shows that layer as foreign, not as a blob missing from a
// complete image: before it said stored "no", as for a blob lost.
func TestImageDetailForeignLayer(t *testing.T) {
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	foreign := static.NewLayer([]byte("a windows base layer"), types.DockerForeignLayer)
	own := static.NewLayer([]byte("the image's own layer"), types.DockerLayer)
	img, err := mutate.Append(empty.Image,
		mutate.Addendum{Layer: foreign, URLs: []string{"https://mcr.example/base.tar.gz"}},
		mutate.Addendum{Layer: own})
	if err != nil {
		t.Fatal(err)
	}
	if img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "windows", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"}}); err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/library/win:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	fd, err := foreign.Digest()
	if err != nil {
		t.Fatal(err)
	}
	m := servertest.Start(t, up.URL)
	if a := send(t, "GET", m.URL()+"/v2/library/win/manifests/v1", "", map[string]string{"Accept": manifestAccept}); a.status != 200 {
		t.Fatalf("pull win:v1: %d %s", a.status, a.body)
	}
	m.WaitIdle()

	d := getJSON[status.Detail](t, m.URL()+"/api/v1/images/docker.io/library/win", nil)
	if len(d.Images) != 1 || d.Images[0].State != "complete" || len(d.Images[0].Blobs) != 3 {
		t.Fatalf("detail %+v; want one complete image of 3 blobs", d)
	}
	for _, b := range d.Images[0].Blobs {
		switch {
		case b.Digest.String() == fd.String() && (!b.Foreign || b.Stored):
			t.Errorf("foreign layer %+v; want it shown as foreign, not stored", b)
		case b.Digest.String() != fd.String() && (b.Foreign || !b.Stored):
			t.Errorf("blob %+v; want it stored", b)
		}
	}
	page := send(t, "GET", m.URL()+"/images/docker.io/library/win", "", nil)
	if row := rowOf(string(page.body), fd.String()); !strings.Contains(row, "foreign") {
		t.Errorf("the image page's row of the foreign layer: %q; want it marked foreign", row)
	}
}

// rowOf is the table row of an HTML page that names d ("" if none).
func rowOf(page, d string) string {
	i := strings.Index(page, "<code>"+d+"</code>")
	if i < 0 {
		return ""
	}
	start := strings.LastIndex(page[:i], "<tr>")
	end := strings.Index(page[i:], "</tr>")
	if start < 0 || end < 0 {
		return ""
	}
	return page[start : i+end]
}
