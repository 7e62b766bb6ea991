package proxy

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// The mirror record of an index listing an index names the platforms
// its inner index had mirrored: before it named none (the outer index's
// own entries have no platform), and what reads the record alone (the
// status page over a registry destination) listed the image with no
// platform.
func TestFillRecordsNestedIndexPlatforms(t *testing.T) {
	f := newWritesFixture(t)
	inner := f.up.SeedMultiArch(t, "library/nested", "inner", fixture.OCI)
	outer, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": oci.MediaTypeOCIIndex, "manifests": []any{
		map[string]any{"mediaType": inner.MediaType, "digest": inner.Digest, "size": len(inner.Index)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d := f.up.PutManifest(t, "library/nested", "outer", oci.MediaTypeOCIIndex, outer)
	f.request(t, http.MethodGet, "/v2/library/nested/manifests/outer", outer, oci.MediaTypeOCIIndex, "miss")
	f.waitIdle(t)
	rec, ok, err := f.index.Fill(DefaultHost, "library/nested", digest.Digest(d))
	if err != nil || !ok || rec.State != storage.FillComplete || !slices.Equal(rec.Platforms, []string{"linux/amd64", "linux/arm/v7", "linux/arm64"}) {
		t.Errorf("fill record of the outer index: %+v %v %v; want complete with the 3 linux platforms", rec, ok, err)
	}
}
