package lifecycle

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// tagIndex is an index of two images in one repository, a with three
// tags and a cosign signature (sha256-<hex>.sig), b with one, their
// manifests not stored; and a collector of it.
func tagIndex(t *testing.T) (c *Collector, ix *storage.Index, a, b digest.Digest) {
	t.Helper()
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	store, err := storage.OpenDriverStore(t.Context(), "inmemory", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	a, b = digest.FromString("a"), digest.FromString("b")
	sig := digest.FromString("signature of a")
	for _, m := range []struct {
		d   digest.Digest
		tag string
	}{{a, "v3"}, {a, "v1"}, {a, "v2"}, {b, "latest"}, {sig, "sha256-" + a.Encoded() + ".sig"}} {
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/app", Digest: m.d, Tag: m.tag,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100}}); err != nil {
			t.Fatal(err)
		}
	}
	return New(store, ix, Options{}), ix, a, b
}

// The eviction's model keeps no plain tags (1M at 100k images), only the
// referrers and cosign tags that decide what is folded into what; the
// victims' tags are read again once they are chosen: the report lists
// them, sorted, and they leave the index with the signature's tag.
func TestEvictModelWithoutTags(t *testing.T) {
	c, ix, a, b := tagIndex(t)
	m, err := c.model(t.Context(), false, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.images) != 2 {
		t.Fatalf("%d images, want 2 (the signature folded into a)", len(m.images))
	}
	for _, e := range m.images {
		if len(e.Tags) != 0 || !e.plainTags {
			t.Errorf("%s: tags %q kept (plain tags noted: %v), want none", e.Digest, e.Tags, e.plainTags)
		}
		if e.Digest == a && len(e.artifactTags) != 1 {
			t.Errorf("a: artifact tags %v, want its signature's", e.artifactTags)
		}
	}

	r, err := c.Evict(t.Context(), 0, time.Hour, time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := map[digest.Digest][]string{a: {"v1", "v2", "v3"}, b: {"latest"}}
	if len(r.Evicted) != 2 {
		t.Fatalf("evicted %+v, want a and b", r.Evicted)
	}
	for _, im := range r.Evicted {
		if !slices.Equal(im.Tags, want[im.Digest]) {
			t.Errorf("%s evicted with tags %q, want %q", im.Digest, im.Tags, want[im.Digest])
		}
	}
	left := 0
	if err := ix.ReadTagDigests(func(key, _ []byte) { left++ }); err != nil || left != 0 {
		t.Errorf("%d tags left after the eviction (%v), want none", left, err)
	}
}
