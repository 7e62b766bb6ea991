package lifecycle

import (
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A root whose key is not a valid digest (upper-case hex) is in the
// content table's second part: the collection skips it as a root, as it
// skips any root that is not a digest, and keeps its records (rooted).
func TestCollectSkipsRootsThatAreNotDigests(t *testing.T) {
	ix, store := openIndexStore(t)
	upper := digest.Digest("sha256:" + strings.ToUpper(digest.FromString("upper").Encoded()))
	sha512 := digest.SHA512.FromString("not stored")
	for _, d := range []digest.Digest{upper, sha512} {
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/app", Digest: d, Tag: d.Algorithm().String(),
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1, FetchedAt: time.Unix(1, 0)}}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(store, ix, Options{}).Collect(t.Context())
	if err != nil {
		t.Fatalf("Collect = %v, want the roots that are not digests skipped", err)
	}
	if r.ManifestsRemoved != 0 {
		t.Errorf("Collect removed %d manifests, want both kept by their tags", r.ManifestsRemoved)
	}
	for _, d := range []digest.Digest{upper, sha512} {
		if _, ok, err := ix.Manifest(d); err != nil || !ok {
			t.Errorf("%s: record gone (%v, %v)", d, ok, err)
		}
	}
}
