package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// The plan of an OCI artifact manifest (image-spec 1.1-rc, which some
// registries still serve: its files in "blobs", no config) lists the
// blobs the copy stores: `mirror --dry-run` said it would copy none.
func TestPlanListsArtifactBlobs(t *testing.T) {
	files := [][]byte{[]byte("an sbom"), []byte("a signature")}
	manifest := []byte(`{"mediaType":"` + oci.MediaTypeOCIArtifactManifest + `","artifactType":"application/vnd.example","blobs":[` +
		`{"mediaType":"application/octet-stream","digest":"` + digest.FromBytes(files[0]).String() + `","size":7},` +
		`{"mediaType":"application/octet-stream","digest":"` + digest.FromBytes(files[1]).String() + `","size":11}]}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
		case "/v2/library/art/manifests/v1":
			w.Header().Set("Content-Type", oci.MediaTypeOCIArtifactManifest)
			_, _ = w.Write(manifest)
		case "/v2/library/art/blobs/" + digest.FromBytes(files[0]).String():
			_, _ = w.Write(files[0])
		case "/v2/library/art/blobs/" + digest.FromBytes(files[1]).String():
			_, _ = w.Write(files[1])
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	p, _, _ := testMirror(t, nil, srv.URL)
	plan, err := p.Plan(t.Context(), "art:v1", nil)
	if err != nil || len(plan.Blobs) != len(files) {
		t.Fatalf("plan of art:v1: %+v %v; want its %d blobs", plan, err, len(files))
	}
	if _, err := p.Copy(t.Context(), "art:v1", nil, nil); err != nil {
		t.Fatal(err)
	}
	if plan, err = p.Plan(t.Context(), "art:v1", nil); err != nil {
		t.Fatal(err)
	}
	for _, b := range plan.Blobs {
		if !b.Stored {
			t.Errorf("blob %s not stored by the copy", b.Digest)
		}
	}
}
