package lifecycle_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// seedNested pushes an index listing a multi-platform index (image-spec
// lets an index list indexes) to repo:outer, and returns it as a pull
// through the mirror gets it, and the inner index.
func seedNested(t *testing.T, e *env, repo string) (outer image, inner *fixture.MultiArch) {
	t.Helper()
	inner = e.up.SeedMultiArch(t, "library/"+repo, "inner", fixture.OCI)
	raw, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": inner.MediaType, "digest": inner.Digest, "size": len(inner.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d := e.up.PutManifest(t, "library/"+repo, "outer", oci.MediaTypeOCIIndex, raw)
	outer = multi(inner)
	outer.repo, outer.tag, outer.digest = repo, "outer", d
	outer.manifests[d] = raw
	return outer, inner
}

// An index listing an index is listed with the platforms its inner index
// has mirrored and left out, as the inner index is when pulled itself:
// before, `ls` and the status page showed none ("-"), and no platform
// left out.
func TestImagesNestedIndex(t *testing.T) {
	e := newEnv(t)
	outer, _ := seedNested(t, e, "n")
	e.pull(t, outer)
	im := findImage(t, images(t, e.collector(lifecycle.Options{})), outer.digest)
	if !slices.Equal(im.Platforms, []string{"linux/amd64", "linux/arm/v7", "linux/arm64"}) || !slices.Equal(im.PlatformsLeftOut, []string{"windows/amd64"}) {
		t.Errorf("nested index: platforms %q, left out %q; want the 3 linux platforms, windows/amd64 left out", im.Platforms, im.PlatformsLeftOut)
	}
	if im.State != storage.FillComplete || im.Manifests != len(outer.manifests) || im.Blobs != len(outer.blobs) {
		t.Errorf("nested index = %+v; want complete, with %d manifests and %d blobs", im, len(outer.manifests), len(outer.blobs))
	}
}
