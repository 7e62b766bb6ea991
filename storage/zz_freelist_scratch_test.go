package storage

import (
	mrand "math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

func BenchmarkScratchFreelistSync(b *testing.B) {
	for _, nofl := range []bool{false, true} {
		b.Run("nofreelistsync="+strconv.FormatBool(nofl), func(b *testing.B) {
			db, err := bolt.Open(filepath.Join("/work/notes/scratchdb-"+strconv.FormatBool(nofl)), 0o600, &bolt.Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			big := make([]byte, 6000)
			key := func(i int) []byte { return []byte(digest.FromString(strconv.Itoa(i))) }
			const n = 120000
			for start := 0; start < n; start += 5000 {
				db.Update(func(tx *bolt.Tx) error {
					bk, _ := tx.CreateBucketIfNotExists([]byte("big"))
					sm, _ := tx.CreateBucketIfNotExists([]byte("small"))
					for i := start; i < start+5000; i++ {
						bk.Put(key(i), big)
						sm.Put(key(i), []byte("small value of a record"))
					}
					return nil
				})
			}
			db.Update(func(tx *bolt.Tx) error {
				for i := 0; i < n; i += 2 {
					tx.Bucket([]byte("big")).Delete(key(i))
				}
				return nil
			})
			db.Update(func(tx *bolt.Tx) error { tx.DB().NoFreelistSync = nofl; return nil })
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
