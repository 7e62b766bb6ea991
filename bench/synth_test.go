package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A synthetic cache, written straight to a data directory (store files and
// bbolt index) as the mirror would have left it after pulling images one
// by one: every image is a linux/amd64 OCI manifest with a config and
// synthLayers layers of its own, synthTags tags (each with its manifest's
// media type and size, as this version records a tag: a cache built before
// has tags without, which a hit reads the manifest's record for), links, a
// complete fill record and a last pull. 100k images are 300k blobs and 1M
// tags.
const (
	synthLayers    = 2
	synthTags      = 10
	synthLayerSize = 1 << 10
	synthPerRepo   = 100 // images per repository
	synthHost      = "docker.io"
)

// synthImage names image i of a synthetic cache.
func synthImage(i int) (repo, tag string) {
	return fmt.Sprintf("library/synth%d", i/synthPerRepo), fmt.Sprintf("v%d-0", i)
}

// synthBlob is blob j of image i: small, unique, deterministic.
func synthBlob(i, j int) []byte {
	b := make([]byte, synthLayerSize)
	copy(b, fmt.Sprintf("synthetic layer %d of image %d\n", j, i))
	return b
}

// synthBuckets are the index buckets a pulled image has entries in, named
// as storage/index.go names them.
var synthBuckets = []string{"tags", "manifests", "blobs", "links", "mirrors", "holders", "access"}

// buildSynthCache writes a cache of n images into dir (the mirror's
// --data) and returns the total bytes stored. Writes go through one bbolt
// transaction per 2,000 images without fsync, then one sync; then the
// index is opened once (its stored total summed and stamped).
func buildSynthCache(tb testing.TB, dir string, n int) int64 {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	marker := filepath.Join(dir, storage.OwnDir, "marker")
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(marker, []byte("docker-mirror data directory (synthetic)\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	// Fetched two days ago: out of the collection's grace period.
	now := time.Now().UTC().Add(-48 * time.Hour)
	var total int64
	// Files are written by a few workers: creating 400k small files is
	// what takes time, and it waits on the disk more than on the CPU.
	type file struct {
		path string
		data []byte
	}
	files := make(chan file, 1024)
	var wg sync.WaitGroup
	var werr error
	var werrOnce sync.Once
	for range 8 {
		wg.Go(func() {
			for f := range files {
				err := os.MkdirAll(filepath.Dir(f.path), 0o755)
				if err == nil {
					err = os.WriteFile(f.path, f.data, 0o644)
				}
				if err == nil {
					// As old as the records: out of the grace period.
					err = os.Chtimes(f.path, now, now)
				}
				if err != nil {
					werrOnce.Do(func() { werr = err })
				}
			}
		})
	}
	writeBlob := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		files <- file{filepath.Join(dir, "blobs", "sha256", d.Encoded()[:2], d.Encoded(), "data"), data}
		total += int64(len(data))
		return d
	}
	// Each record as the index writes it: JSON, a tag's in binary.
	js := func(v any) []byte {
		var b []byte
		var err error
		if r, ok := v.(storage.TagRecord); ok {
			b, err = r.MarshalBinary()
		} else {
			b, err = json.Marshal(v)
		}
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	const perTx = 2000
	for start := 0; start < n; start += perTx {
		err := db.Update(func(tx *bolt.Tx) error {
			bk := map[string]*bolt.Bucket{}
			for _, name := range synthBuckets {
				b, err := tx.CreateBucketIfNotExists([]byte(name))
				if err != nil {
					return err
				}
				bk[name] = b
			}
			for i := start; i < min(start+perTx, n); i++ {
				repo, _ := synthImage(i)
				cfg := js(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers"}, "created": now, "synthetic": i})
				descs := []v1.Descriptor{{MediaType: v1.MediaTypeImageConfig, Digest: writeBlob(cfg), Size: int64(len(cfg))}}
				for j := range synthLayers {
					data := synthBlob(i, j)
					descs = append(descs, v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: writeBlob(data), Size: int64(len(data))})
				}
				man := js(v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: descs[0], Layers: descs[1:], Versioned: specs.Versioned{SchemaVersion: 2}})
				md := writeBlob(man)
				put := func(b, k string, v []byte) error { return bk[b].Put([]byte(k), v) }
				link := func(d digest.Digest) error {
					if err := put("links", synthHost+"/"+repo+"@"+d.String(), nil); err != nil {
						return err
					}
					return put("holders", d.String()+"\x00"+synthHost+"/"+repo, nil)
				}
				for _, d := range descs {
					if err := put("blobs", d.Digest.String(), js(storage.BlobRecord{Size: d.Size, FetchedAt: now, LastAccess: now})); err != nil {
						return err
					}
					if err := link(d.Digest); err != nil {
						return err
					}
				}
				mrec := storage.ManifestRecord{MediaType: v1.MediaTypeImageManifest, Size: int64(len(man)), FetchedAt: now}
				if err := put("manifests", md.String(), js(mrec)); err != nil {
					return err
				}
				if err := link(md); err != nil {
					return err
				}
				if err := put("mirrors", synthHost+"/"+repo+"@"+md.String(), js(storage.FillRecord{Upstream: synthHost, Repo: repo, State: storage.FillComplete, UpdatedAt: now})); err != nil {
					return err
				}
				// Older images were pulled longer ago: eviction has an order.
				if err := put("access", md.String(), js(now.Add(time.Duration(i)*time.Second))); err != nil {
					return err
				}
				for k := range synthTags {
					tag := fmt.Sprintf("v%d-%d", i, k)
					if err := put("tags", storage.TagKey(synthHost, repo, tag), js(storage.NewTagRecord(md, mrec, now))); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	close(files)
	wg.Wait()
	if werr != nil {
		tb.Fatal(werr)
	}
	if err := db.Sync(); err != nil {
		tb.Fatal(err)
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	// A server's index carries the stored total, stamped by its last
	// write: opened once, as a server would be before its restart, the
	// cache's first open sums the records here, not in a timed start.
	ix, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
	if err != nil {
		tb.Fatal(err)
	}
	if got := ix.StoredBytes(); got != total {
		tb.Fatalf("the index sums %d stored bytes, the build wrote %d", got, total)
	}
	if err := ix.Close(); err != nil {
		tb.Fatal(err)
	}
	return total
}

// digestOfBytes is the digest of data as a string.
func digestOfBytes(data []byte) string { return digest.FromBytes(data).String() }
