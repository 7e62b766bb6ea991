package storage

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestWriteBatchReleasesByMapped checks that a batch write of keys
// scattered over the tree (each item a Get and a Put of a random tag, as
// Flush's access times are) drops the mapped pages whenever RssFile grew
// the releaser's budget, during the transaction and after its commit (which
// faults every page it changed back in), so that what is mapped stays near
// the budget; the same batch without the releases maps many MiB.
func TestWriteBatchReleasesByMapped(t *testing.T) {
	const n = 60_000 // ~9 MiB of tag records
	ix, _ := filledIndex(t, n)
	ix.mapped.stop()
	if _, ok := residentFileBytes(); !ok {
		t.Skip("no /proc/self/statm")
	}
	var keys [][]byte
	if err := ix.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTags).ForEach(func(k, _ []byte) error {
			keys = append(keys, bytes.Clone(k))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	keys = keys[:20_000]
	ps := os.Getpagesize()
	write := func(budget int64) (most int) {
		ix.releaseAll(t)
		ix.writeLimits = &writeLimits{keys: defaultWriteKeys, pages: defaultWritePages, hold: time.Hour, now: time.Now, mapped: budget}
		if _, err := ix.writeAll(len(keys), batchWrite{item: func(tx *bolt.Tx, i int) (int, error) {
			b := tx.Bucket(bucketTags)
			if err := b.Put(keys[i], bytes.Clone(b.Get(keys[i]))); err != nil {
				return 0, err
			}
			if i%250 == 0 {
				all, _ := countPresent(t, ix, int(tx.Size())/ps, nil, 0)
				most = max(most, all)
			}
			return 1, nil
		}}); err != nil {
			t.Fatal(err)
		}
		return most * ps
	}
	// Measured: ~2.3 MiB, and ~28 MiB without the releases.
	if most := write(512 << 10); most > 4<<20 {
		t.Errorf("releasing by RssFile: up to %d KiB mapped", most>>10)
	}
	if most := write(1 << 40); most < 16<<20 {
		t.Errorf("without releases up to %d KiB mapped only: the test cannot tell", most>>10)
	}
}
