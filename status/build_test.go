package status_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// BenchmarkListImages measures what a rebuild of the image list costs on
// 10,000 cached single-platform images (a manifest, a config and a layer
// each) in the filesystem store: the lifecycle's listing, which reads
// every manifest and config. The page does it at most every ImagesMaxAge,
// in the background, and only once the index has changed.
func BenchmarkListImages(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	store, err := storage.OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": filepath.Join(dir, "store")})
	if err != nil {
		b.Fatal(err)
	}
	ix, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ix.Close() })
	now := time.Now()
	put := func(repo string, body []byte) digest.Digest {
		d := digest.FromBytes(body)
		if err := store.Put(ctx, repo, d, int64(len(body)), bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
		return d
	}
	const n = 10_000
	for i := range n {
		repo := fmt.Sprintf("team%03d/app%05d", i%100, i)
		cfg := []byte(fmt.Sprintf(`{"os":"linux","architecture":"amd64","n":%d}`, i))
		layer := []byte(fmt.Sprintf("layer %d", i))
		cd, ld := put("docker.io/"+repo, cfg), put("docker.io/"+repo, layer)
		man := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
			oci.MediaTypeOCIManifest, cd, len(cfg), ld, len(layer)))
		md := put("docker.io/"+repo, man)
		for _, bl := range []struct {
			d digest.Digest
			n int
		}{{cd, len(cfg)}, {ld, len(layer)}} {
			if err := ix.RecordBlob("docker.io", repo, bl.d, int64(bl.n), now); err != nil {
				b.Fatal(err)
			}
		}
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: md, Tag: "v1",
			Record: storage.ManifestRecord{MediaType: oci.MediaTypeOCIManifest, Size: int64(len(man)), FetchedAt: now},
			Fill:   &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete, Platforms: []string{"linux/amd64"}, UpdatedAt: now}}); err != nil {
			b.Fatal(err)
		}
	}
	c := lifecycle.New(store, ix, lifecycle.Options{})
	b.ResetTimer()
	for b.Loop() {
		ims, err := c.Images(ctx)
		if err != nil || len(ims) != n {
			b.Fatal(len(ims), err)
		}
	}
}
