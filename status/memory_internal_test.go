package status

import (
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The image list is kept for the life of the process; its tags are kept
// front-coded in one array (packedTags), not as one string an image.
// Images of 10 tags, 10 images a repository: 249 bytes an image kept
// with a string of tags each (round 8's code), ~168 now.
func TestCatalogMemoryPerImage(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	const n = 5000
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	ims := make(listed, n)
	for i := range ims {
		tags := make([]string, 10)
		for k := range tags {
			tags[k] = fmt.Sprintf("v1.%d.%d", i, k)
		}
		ims[i] = lifecycle.Image{Upstream: "docker.io", Repo: fmt.Sprintf("library/app%d", i/10), Tags: tags,
			Digest: digest.FromString(fmt.Sprint(i)), MediaType: "application/vnd.oci.image.manifest.v1+json", Platforms: []string{"linux/amd64"},
			Size: int64(1000 + i), Manifests: 1, Blobs: 3, LastPull: t0.Add(time.Duration(i) * time.Second), State: storage.FillComplete}
	}
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	c := &catalog{list: ims, index: ix, maxAge: time.Hour, now: time.Now}
	s, err := c.load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.rows) != n {
		t.Fatalf("%d rows, want %d", len(s.rows), n)
	}
	with := heap()
	runtime.KeepAlive(s)
	s = nil
	without := heap()
	runtime.KeepAlive(ims)
	per := (with - without) / n
	t.Logf("%d bytes an image", per)
	if per > 200 {
		t.Errorf("the image list keeps %d bytes an image, want at most 200", per)
	}
}
