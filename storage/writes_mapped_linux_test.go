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
// Flush's access times are) commits whenever RssFile grew the releaser's
// budget, and drops the mapped pages after the commit (which faults every
// page it changed back in), not inside the transaction, under the write
// lock: what is mapped stays near the budget, and within a transaction it
// only grows. The same batch without a budget commits less often and maps
// many MiB.
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
	// most is the most pages mapped at once, txs the transactions, dropped
	// the pages that went from the mapping inside one transaction.
	write := func(budget int64) (most, txs, dropped int) {
		ix.releaseAll(t)
		ix.writeLimits = &writeLimits{keys: defaultWriteKeys, pages: defaultWritePages, hold: time.Hour, now: time.Now, mapped: budget}
		var last int // mapped at the transaction's last look
		if _, err := ix.writeAll(len(keys), batchWrite{
			begin: func(*bolt.Tx) error { txs, last = txs+1, 0; return nil },
			item: func(tx *bolt.Tx, i int) (int, error) {
				b := tx.Bucket(bucketTags)
				if err := b.Put(keys[i], bytes.Clone(b.Get(keys[i]))); err != nil {
					return 0, err
				}
				if i%4 == 0 {
					all, _ := countPresent(t, ix, int(tx.Size())/ps, nil, 0)
					most, dropped, last = max(most, all), dropped+max(last-all, 0), all
				}
				return 1, nil
			},
		}); err != nil {
			t.Fatal(err)
		}
		return most * ps, txs, dropped
	}
	// Measured: ~2.3 MiB, and ~28 MiB without a budget.
	most, txs, dropped := write(512 << 10)
	if most > 4<<20 {
		t.Errorf("committing by RssFile: up to %d KiB mapped", most>>10)
	}
	if dropped > 0 {
		t.Errorf("%d pages released inside the write transactions, under the write lock", dropped)
	}
	mostAll, txsAll, _ := write(1 << 40)
	if mostAll < 16<<20 {
		t.Errorf("without a budget up to %d KiB mapped only: the test cannot tell", mostAll>>10)
	}
	if txs <= txsAll {
		t.Errorf("%d transactions with a budget, %d without: the budget did not end any", txs, txsAll)
	}
}
