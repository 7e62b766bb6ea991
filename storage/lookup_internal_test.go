package storage

import (
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// lookupImage is image i of BenchmarkLookup's index: its repository and
// manifest digest.
func lookupImage(i int) (repo string, d digest.Digest) {
	return fmt.Sprintf("library/synth%d", i/100), digest.FromString(fmt.Sprint("manifest ", i))
}

// buildLookupIndex writes an index of n images as a mirror's (10 tags, a
// manifest, its link and mirror record, 3 blobs and their links each) at
// path, straight through bbolt.
func buildLookupIndex(b *testing.B, path string, n int) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	now := time.Now().UTC()
	js := func(v any) []byte {
		raw, err := json.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		return raw
	}
	for start := 0; start < n; start += 2000 {
		err := db.Update(func(tx *bolt.Tx) error {
			for _, name := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			for i := start; i < min(start+2000, n); i++ {
				repo, d := lookupImage(i)
				puts := [][3][]byte{
					{bucketManifests, []byte(d), js(ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 500, FetchedAt: now})},
					{bucketLinks, linkKey("docker.io", repo, d), nil},
					{bucketMirrors, linkKey("docker.io", repo, d), js(FillRecord{Upstream: "docker.io", Repo: repo, State: FillComplete, UpdatedAt: now})},
					{bucketAccess, []byte(d), js(now)},
				}
				for j := range 3 {
					bd := digest.FromString(fmt.Sprint("blob ", i, " ", j))
					puts = append(puts, [3][]byte{bucketBlobs, []byte(bd), js(BlobRecord{Size: 1024, FetchedAt: now, LastAccess: now})},
						[3][]byte{bucketLinks, linkKey("docker.io", repo, bd), nil})
				}
				for k := range 10 {
					puts = append(puts, [3][]byte{bucketTags, tagKey("docker.io", repo, fmt.Sprintf("v%d-%d", i, k)), js(TagRecord{Digest: d, FetchedAt: now, CheckedAt: now})})
				}
				for _, p := range puts {
					if err := tx.Bucket(p[0]).Put(p[1], p[2]); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// minorFaults is the process's minor page faults so far.
func minorFaults() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return int64(ru.Minflt)
}

// BenchmarkLookup measures the index's part of a manifest by tag (the tag,
// the link, the manifest record, its mirror record: four read
// transactions) on indexes of 1k and 100k images (BENCH_LOOKUP_IMAGES),
// with the mapped-pages watcher (mapped.go) running and stopped, and the
// minor page faults per lookup.
func BenchmarkLookup(b *testing.B) {
	sizes := "1000,100000"
	if v := os.Getenv("BENCH_LOOKUP_IMAGES"); v != "" {
		sizes = v
	}
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(b.TempDir(), "index.db")
		buildLookupIndex(b, path, n)
		for _, watch := range []bool{true, false} {
			b.Run(fmt.Sprintf("images=%d/watch=%v", n, watch), func(b *testing.B) {
				ix, err := OpenIndex(path)
				if err != nil {
					b.Fatal(err)
				}
				defer ix.Close()
				if !watch {
					ix.mapped.stop()
				}
				rng := mrand.New(mrand.NewPCG(1, uint64(n)))
				lookup := func() {
					i := rng.IntN(n)
					repo, d := lookupImage(i)
					if _, ok, err := ix.Tag("docker.io", repo, fmt.Sprintf("v%d-%d", i, rng.IntN(10))); !ok || err != nil {
						b.Fatal("tag", ok, err)
					}
					if ok, err := ix.Linked("docker.io", repo, d); !ok || err != nil {
						b.Fatal("link", ok, err)
					}
					if _, ok, err := ix.Manifest(d); !ok || err != nil {
						b.Fatal("manifest", ok, err)
					}
					if _, ok, err := ix.Fill("docker.io", repo, d); !ok || err != nil {
						b.Fatal("fill", ok, err)
					}
				}
				for range 2000 {
					lookup() // as BenchmarkScale's warm-up
				}
				faults := minorFaults()
				b.ResetTimer()
				for b.Loop() {
					lookup()
				}
				b.ReportMetric(float64(minorFaults()-faults)/float64(b.N), "minflt/op")
			})
		}
	}
}

// BenchmarkCommitLargeFreelist measures a commit of 256 scattered puts
// with a freelist of ~100k free pages (what a large eviction leaves), with
// each of bbolt's freelist types: the CPU part (no fsync).
func BenchmarkCommitLargeFreelist(b *testing.B) {
	for _, typ := range []bolt.FreelistType{bolt.FreelistArrayType, bolt.FreelistMapType} {
		b.Run(string(typ), func(b *testing.B) {
			db, err := bolt.Open(filepath.Join(b.TempDir(), "db"), 0o600, &bolt.Options{NoSync: true, FreelistType: typ})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			big := make([]byte, 6000)
			key := func(i int) []byte { return []byte(digest.FromString(strconv.Itoa(i))) }
			const n = 60000
			for start := 0; start < n; start += 5000 {
				if err := db.Update(func(tx *bolt.Tx) error {
					bk, _ := tx.CreateBucketIfNotExists([]byte("big"))
					sm, _ := tx.CreateBucketIfNotExists([]byte("small"))
					for i := start; i < start+5000; i++ {
						if err := bk.Put(key(i), big); err != nil {
							return err
						}
						if err := sm.Put(key(i), []byte("small value of a record")); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			// Every other big value freed: scattered runs of free pages.
			if err := db.Update(func(tx *bolt.Tx) error {
				for i := 0; i < n; i += 2 {
					if err := tx.Bucket([]byte("big")).Delete(key(i)); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			rng := mrand.New(mrand.NewPCG(1, 2))
			b.ResetTimer()
			for b.Loop() {
				if err := db.Update(func(tx *bolt.Tx) error {
					for range 256 {
						if err := tx.Bucket([]byte("small")).Put(key(rng.IntN(n)), []byte("another value of a record")); err != nil {
							return err
						}
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(db.Stats().FreePageN), "free-pages")
		})
	}
}
