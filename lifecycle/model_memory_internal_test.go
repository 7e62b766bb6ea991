package lifecycle

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/storage"
)

// The image model read with tags (`ls`, the status list) keeps no
// string per tag: its tags are one string an image. Images of 10 tags,
// half of them indexes of two platforms: 1,342 bytes an image with a
// string per tag (round 7's code), ~760 now.
func TestModelMemoryPerImage(t *testing.T) {
	ctx := t.Context()
	ix, store := openIndexStore(t)
	const n = 500
	type blob struct {
		d    digest.Digest
		size int
	}
	var blobs []blob
	put := func(repo string, data []byte) (digest.Digest, int) {
		d := digest.FromBytes(data)
		if err := store.Put(ctx, repo, d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		return d, len(data)
	}
	image := func(repo string, i int, arch string) (digest.Digest, []byte) {
		cfg, cfgN := put(repo, []byte(fmt.Sprintf(`{"architecture":%q,"os":"linux","i":%d}`, arch, i)))
		layer, layerN := put(repo, []byte(fmt.Sprintf("layer %d %s", i, arch)))
		blobs = append(blobs, blob{cfg, cfgN}, blob{layer, layerN})
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`, cfg, cfgN, layer, layerN))
		d, _ := put(repo, body)
		return d, body
	}
	now := time.Now()
	// Recorded from many goroutines: the index batches them (a commit
	// each would take minutes).
	var eg errgroup.Group
	eg.SetLimit(64)
	record := func(e storage.ManifestEntry) {
		eg.Go(func() error { return ix.RecordManifest(e) })
	}
	for i := range n {
		repo := fmt.Sprintf("library/app%d", i)
		root, body := image(repo, i, "amd64")
		media := "application/vnd.oci.image.manifest.v1+json"
		if i%2 == 1 {
			arm, armBody := image(repo, i, "arm64")
			record(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: arm,
				Record: storage.ManifestRecord{MediaType: media, Size: int64(len(armBody)), FetchedAt: now}})
			record(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: root,
				Record: storage.ManifestRecord{MediaType: media, Size: int64(len(body)), FetchedAt: now}})
			media = "application/vnd.oci.image.index.v1+json"
			body = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[`+
				`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}},`+
				`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"architecture":"arm64","os":"linux"}}]}`,
				media, root, len(body), arm, len(armBody)))
			root, _ = put(repo, body)
		}
		for tag := range 10 {
			record(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: root, Tag: fmt.Sprintf("v1.%d.%d", i, tag),
				Record: storage.ManifestRecord{MediaType: media, Size: int64(len(body)), FetchedAt: now}})
		}
	}
	for _, b := range blobs {
		eg.Go(func() error { return ix.RecordBlob("docker.io", "library/app", b.d, int64(b.size), now) })
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	c := New(store, ix, Options{})
	// What the model holds: the live heap with it, less the live heap
	// once it is dropped.
	heap := func() int64 {
		runtime.GC()
		runtime.GC() // what finalizers kept for one more cycle
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	m, err := c.model(ctx, true, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.images) != n {
		t.Fatalf("%d images, want %d", len(m.images), n)
	}
	with := heap()
	runtime.KeepAlive(m)
	m = nil
	without := heap()
	per := (with - without) / n
	t.Logf("%d bytes an image", per)
	if per > 800 {
		t.Errorf("the model holds %d bytes an image, want at most 800", per)
	}
}
