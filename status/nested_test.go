package status_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The page of an index listing an index (image-spec allows it; the fill
// mirrors it) shows the inner index's platforms, their images and blobs,
// as the inner index's own page does: before it showed the inner index
// alone, "0 blobs listed" and nothing left out for an image of 13 blobs.
func TestImageDetailNestedIndex(t *testing.T) {
	up := fixture.StartUpstream(t)
	inner := up.SeedMultiArch(t, "library/nested", "inner", fixture.OCI)
	outer, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": inner.MediaType, "digest": inner.Digest, "size": len(inner.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, "library/nested", "outer", oci.MediaTypeOCIIndex, outer)
	m := servertest.Start(t, up.URL())
	if a := send(t, http.MethodGet, m.URL()+"/v2/library/nested/manifests/outer", "", map[string]string{"Accept": manifestAccept}); a.status != http.StatusOK {
		t.Fatalf("pull nested:outer: %d %s", a.status, a.body)
	}
	m.WaitIdle()

	im, stored, platforms := soleImage(t, m.URL()+"/api/v1/images/docker.io/library/nested")
	// Both indexes, three linux images and their attestations; windows left out.
	if stored != 8 || !platforms["linux/arm/v7"] || platforms["windows/amd64"] || !slices.Equal(im.LeftOut, []string{"windows/amd64"}) {
		t.Errorf("manifests %+v, left out %v; want both indexes, 3 linux images and their attestations stored, windows/amd64 left out", im.Manifests, im.LeftOut)
	}
	want := map[string]bool{inner.SharedLayer: true}
	for p, pim := range inner.Platforms {
		if p != "windows/amd64" {
			for _, b := range pim.Blobs() {
				want[b] = true
			}
		}
	}
	got := map[string]bool{}
	for _, b := range im.Blobs {
		if b.Stored {
			got[b.Digest.String()] = true
		}
	}
	for b := range want {
		if !got[b] {
			t.Errorf("blob %s of a linux image not listed as stored (%d blobs listed)", b, len(im.Blobs))
		}
	}
}
