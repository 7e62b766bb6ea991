package storage

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// FuzzLeafLookup checks the leaf reader against bbolt's own Get on trees
// of every shape a seed gives: keys of 0–300 bytes with shared prefixes,
// empty values and values spanning overflow pages, a nested bucket's key,
// keys deleted again (pages split and merged), looked up present, absent
// and between, with the leaves read from the file and the branch pages
// (as the watcher publishes them) read in place.
func FuzzLeafLookup(f *testing.F) {
	for _, seed := range []uint64{1, 2, 3, 42, 1 << 40} {
		f.Add(seed, uint16(3_000))
	}
	f.Fuzz(func(t *testing.T, seed uint64, n uint16) {
		rnd := rand.New(rand.NewPCG(seed, seed>>7))
		path := filepath.Join(t.TempDir(), "index.db")
		db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		bucket := []byte("b")
		key := func() []byte {
			k := make([]byte, rnd.IntN(300))
			for i := range k {
				k[i] = "ab/:@0z\x00\xff"[rnd.IntN(9)]
			}
			return k
		}
		var keys [][]byte
		if err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket(bucket)
			if err != nil {
				return err
			}
			if _, err := b.CreateBucket([]byte("nested")); err != nil {
				return err
			}
			for range int(n) % 20_000 {
				k := key()
				if len(k) == 0 {
					continue // bbolt refuses an empty key
				}
				v := make([]byte, []int{0, 8, 200, 5_000, 20_000}[rnd.IntN(5)])
				for i := range v {
					v[i] = byte(rnd.Uint32())
				}
				if err := b.Put(k, v); err != nil {
					return err
				}
				keys = append(keys, k)
			}
			for _, k := range keys[:len(keys)/5] {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		file, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		r := &leafReader{f: file}
		probes := append(slices.Clone(keys), []byte("nested"), []byte{}, []byte{0xff, 0xff})
		for range 500 {
			probes = append(probes, key())
		}
		// The pages the watcher says are mapped: none (every page read
		// from the file), all (every page read in place), and every other
		// page (a tree read both ways; a page with overflow half in may
		// send the lookup to bbolt, ok false).
		for _, mapped := range []string{"none", "all", "alternate"} {
			if err := db.View(func(tx *bolt.Tx) error {
				pages := uint64(tx.Size()) / uint64(db.Info().PageSize)
				switch mapped {
				case "none":
					r.publish(0, nil)
				case "all":
					r.publish(db.Info().Data, []pageRun{{0, pages}})
				case "alternate":
					var runs []pageRun
					for id := uint64(0); id < pages; id += 2 {
						runs = append(runs, pageRun{id, 1})
					}
					r.publish(db.Info().Data, runs)
				}
				for _, k := range probes {
					want := tx.Bucket(bucket).Get(k)
					got, ok, done := r.get(tx, bucket, k)
					if !ok && mapped == "alternate" {
						done()
						continue
					}
					if !ok || (got == nil) != (want == nil) || !bytes.Equal(got, want) {
						t.Fatalf("%s mapped, key %q: got %d bytes (ok %v, nil %v), bbolt %d (nil %v)", mapped, k, len(got), ok, got == nil, len(want), want == nil)
					}
					done()
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
}
