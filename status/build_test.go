package status

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// BenchmarkListImages measures what a build of the image list costs on
// 10,000 cached single-platform images (a manifest, a config and a layer
// each) in the filesystem store: the lifecycle's listing, which reads
// every manifest. The page does it on its first visit, then at most every
// ImagesMaxAge, in the background, and only once the index has changed.
func BenchmarkListImages(b *testing.B) {
	ctx := context.Background()
	const n = 10_000
	store, ix := synthCache(b, n)
	c := lifecycle.New(store, ix, lifecycle.Options{})
	b.ResetTimer()
	cpu0 := cpuTime()
	for b.Loop() {
		ims, err := c.Images(ctx)
		if err != nil || len(ims) != n {
			b.Fatal(len(ims), err)
		}
	}
	// CPU time tells the cost where wall time tells the machine's load.
	b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
}

// BenchmarkFirstVisit measures what the first visit of the page (or of
// /api/v1/images) waits for on the cache of BenchmarkListImages: the
// image list read and sorted, with its pulls and referrers; warm, with
// the store's files in the page cache, and cold, as after a reboot.
func BenchmarkFirstVisit(b *testing.B) {
	ctx := context.Background()
	const n = 10_000
	store, ix := synthCache(b, n)
	col := lifecycle.New(store, ix, lifecycle.Options{})
	for _, cold := range []bool{false, true} {
		name := map[bool]string{false: "warm", true: "cold"}[cold]
		b.Run(name, func(b *testing.B) {
			var cpu time.Duration
			for b.Loop() {
				if cold {
					b.StopTimer()
					if !dropCached(filepath.Join(filepath.Dir(ix.Path()), "store")) {
						b.Skip("cannot drop files from the page cache here")
					}
					b.StartTimer()
				}
				cpu0 := cpuTime()
				c := &catalog{list: col, index: ix, maxAge: time.Minute, now: time.Now} // a fresh start
				s, err := c.get(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if pg, err := s.page("", SortSize, 1, 50); err != nil || len(pg.Images) != 50 {
					b.Fatal(err)
				}
				cpu += cpuTime() - cpu0
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// synthCache writes n single-platform images (docker.io/teamNNN/appNNNNN:v1,
// a complete fill record naming linux/amd64) straight into a filesystem
// store's files and the index's buckets, as the mirror would have left
// them: seconds, where pulling them through the store's and index's
// writes (one fsync each) takes minutes.
func synthCache(tb testing.TB, n int) (*storage.DriverStore, *storage.Index) {
	tb.Helper()
	ctx := context.Background()
	dir := tb.TempDir()
	root, dbPath := filepath.Join(dir, "store"), filepath.Join(dir, "index.db")
	ix, err := storage.OpenIndex(dbPath) // creates the buckets and schema
	if err != nil {
		tb.Fatal(err)
	}
	ix.Close()
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	type file struct {
		path string
		data []byte
	}
	files := make(chan file, 256)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for range 4 {
		wg.Go(func() {
			for f := range files {
				err := os.MkdirAll(filepath.Dir(f.path), 0o755)
				if err == nil {
					err = os.WriteFile(f.path, f.data, 0o644)
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	put := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		files <- file{filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data"), data}
		return d
	}
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	now := time.Now().UTC()
	err = db.Update(func(tx *bolt.Tx) error {
		var werr error
		set := func(bucket, key string, v []byte) {
			if werr == nil {
				werr = tx.Bucket([]byte(bucket)).Put([]byte(key), v)
			}
		}
		link := func(repo string, d digest.Digest) {
			set("links", "docker.io/"+repo+"@"+d.String(), nil)
			set("holders", d.String()+"\x00docker.io/"+repo, nil)
		}
		for i := range n {
			repo := fmt.Sprintf("team%03d/app%05d", i%100, i)
			cfg := []byte(fmt.Sprintf(`{"os":"linux","architecture":"amd64","n":%d}`, i))
			layer := []byte(fmt.Sprintf("layer %d", i))
			cd, ld := put(cfg), put(layer)
			man := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
				oci.MediaTypeOCIManifest, cd, len(cfg), ld, len(layer)))
			md := put(man)
			for _, bl := range []struct {
				d digest.Digest
				n int
			}{{cd, len(cfg)}, {ld, len(layer)}} {
				set("blobs", bl.d.String(), js(storage.BlobRecord{Size: int64(bl.n), FetchedAt: now, LastAccess: now}))
				link(repo, bl.d)
			}
			set("manifests", md.String(), js(storage.ManifestRecord{MediaType: oci.MediaTypeOCIManifest, Size: int64(len(man)), FetchedAt: now}))
			link(repo, md)
			set("mirrors", "docker.io/"+repo+"@"+md.String(), js(storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete, Platforms: []string{"linux/amd64"}, UpdatedAt: now}))
			tag, err := storage.TagRecord{Digest: md, FetchedAt: now}.MarshalBinary() // as the index writes it
			if err != nil {
				return err
			}
			set("tags", storage.TagKey("docker.io", repo, "v1"), tag)
		}
		return werr
	})
	close(files)
	wg.Wait()
	if err == nil {
		err = db.Sync()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	select {
	case err = <-errs:
	default:
	}
	if err != nil {
		tb.Fatal(err)
	}
	store, err := storage.OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": root})
	if err != nil {
		tb.Fatal(err)
	}
	if ix, err = storage.OpenIndex(dbPath); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ix.Close() })
	return store, ix
}
