package storage

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
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
	// 5,000 keys make as many mapped as 20,000 did (most, measured: the
	// same with or without a budget), in a quarter of the transactions:
	// 20,000 took 30-50 s under -race on a busy machine, a synced commit
	// and a count of the mapping every 4 keys.
	keys = keys[:5_000]
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
	// Measured: ~2.3 MiB, and 18.1–28 MiB without a budget (the pages
	// the kernel maps around a fault vary with the machine).
	const bound = 4 << 20
	most, txs, dropped := write(512 << 10)
	if most > bound {
		t.Errorf("committing by RssFile: up to %d KiB mapped", most>>10)
	}
	if dropped > 0 {
		t.Errorf("%d pages released inside the write transactions, under the write lock", dropped)
	}
	// The test tells a budget that does not hold only if, without one,
	// the writes map well over the bound: twice it is the margin (16 MiB,
	// the figure once checked, was within a few MiB of what is measured).
	mostAll, txsAll, _ := write(1 << 40)
	if mostAll < 2*bound {
		t.Errorf("without a budget up to %d KiB mapped only, within twice the bound's %d KiB: the test cannot tell", mostAll>>10, bound>>10)
	}
	t.Logf("mapped at most %d KiB with a budget, %d KiB without (index %d KiB)", most>>10, mostAll>>10, ix.fileSize()>>10)
	if txs <= txsAll {
		t.Errorf("%d transactions with a budget, %d without: the budget did not end any", txs, txsAll)
	}
}

// TestForgetFaultsBeforeTheWriteLock checks that a forget's transaction
// finds the leaves of its digests' records mapped: the records are read
// first in a read transaction (prefault, touchEntries), which faults them
// in, so that the write lock is not held meanwhile. Without it every leaf
// faulted in under the lock.
func TestForgetFaultsBeforeTheWriteLock(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop()
	if _, ok := residentFileBytes(); !ok {
		t.Skip("no /proc/self/statm")
	}
	const n = 30_000
	ds := recordBlobsInOrder(t, ix, n)
	roots, err := ix.Roots()
	if err != nil {
		t.Fatal(err)
	}
	// mapped is how many of the index's pages are in the mapping now.
	mapped := func() int {
		all, _ := countPresent(t, ix, int(ix.fileSize())/os.Getpagesize(), nil, 0)
		return all
	}
	// forget forgets 40 digests of ds from the i-th on, scattered, in one
	// ForgetRooted transaction under a budget of mapped bytes, its pages
	// released first. It returns the pages mapped before, then before
	// each digest the transaction took, and how many it took.
	forget := func(i int, budget int64) (before int, during []int, done int) {
		var batch []digest.Digest
		for j := range 40 {
			batch = append(batch, ds[i+j*(n/40)])
		}
		ix.releaseAll(t)
		before = mapped()
		keep := func(digest.Digest, ContentEntry) bool {
			// Called inside the transaction, before each item's deletes.
			during = append(during, mapped())
			return false
		}
		// No time limit, however slow the race detector makes it.
		ix.writeLimits = &writeLimits{keys: defaultWriteKeys, pages: defaultWritePages, hold: time.Hour, now: time.Now, mapped: budget}
		res, err := ix.ForgetRooted(batch, roots, false, keep)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Forgotten) != res.Done {
			t.Fatalf("ForgetRooted took %d digests, forgot %d", res.Done, len(res.Forgotten))
		}
		roots.Version = res.Version
		return before, during, res.Done
	}

	// Each fault here maps 64 KiB around its page: ~8 MiB for the batch,
	// within a budget of 64.
	before, during, done := forget(0, 64<<20)
	first, last := during[0], during[len(during)-1]
	t.Logf("pages mapped: %d released, %d when the transaction began, %d before its last digest", before, first, last)
	if done != 40 {
		t.Fatalf("ForgetRooted took %d of 40 digests in its transaction", done)
	}
	if first-before < 100 {
		t.Errorf("the batch's reads mapped %d pages before the transaction: nothing faulted in before the write lock", first-before)
	}
	if grew := last - first; grew > (first-before)/8 {
		t.Errorf("%d pages faulted in under the write lock, %d before it", grew, first-before)
	}

	// Under a budget of 4 MiB, the reads before the write lock map about
	// half of it, and they with the transaction about all of it, as the
	// transaction alone did without them (not 4 MiB more). Slack: the
	// budget is checked every 16 lookups, ~2 digests' reads before the
	// transaction, ~5 digests' keys in it (measured: 2.7 and 4.7 MiB).
	const budget = 4 << 20
	ps := os.Getpagesize()
	before, during, done = forget(n/80, budget)
	t.Logf("under 4 MiB: pages mapped: %d released, then %v; %d digests taken", before, during, done)
	if got := (during[0] - before) * ps; got > budget*7/8 {
		t.Errorf("the reads before the transaction mapped %d KiB, far over half the budget of %d KiB", got>>10, budget>>10)
	}
	if got := (slices.Max(during) - before) * ps; got > budget+budget/2 {
		t.Errorf("the reads and the transaction mapped %d KiB, over the budget of %d KiB", got>>10, budget>>10)
	}
	if done == 40 {
		t.Errorf("the budget did not end the transaction: the test cannot tell")
	}
}

// TestBatchesFaultBeforeTheWriteLock checks that a flush's and an
// eviction's unroots fault in the leaves they write before the write
// lock, as a forget does: of the page faults the calling thread takes in
// the call, the write transactions take few. Without the reads first they
// take nearly all (94–99% measured). A transaction's own heap faults (new
// spans, the race detector's shadow) count too: up to 29% measured with
// the reads first, under load; the test fails past 3/4.
func TestBatchesFaultBeforeTheWriteLock(t *testing.T) {
	if _, ok := residentFileBytes(); !ok {
		t.Skip("no /proc/self/statm")
	}
	// faults runs write on this goroutine's thread, the index's pages
	// released first, and returns the thread's page faults in it and
	// those under the write lock.
	faults := func(t *testing.T, ix *Index, write func() error) (all, locked int64) {
		ix.releaseAll(t)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		u0, ok := threadUsage()
		if !ok {
			t.Skip("no thread usage")
		}
		w0 := ix.WriteTotals()
		if err := write(); err != nil {
			t.Fatal(err)
		}
		u1, _ := threadUsage()
		return u1.minflt - u0.minflt, ix.WriteTotals().Faults - w0.Faults
	}
	check := func(t *testing.T, ix *Index, write func() error) {
		all, locked := faults(t, ix, write)
		t.Logf("page faults: %d, %d of them under the write lock", all, locked)
		if all < 100 {
			t.Fatalf("%d page faults in all: the test cannot tell", all)
		}
		if locked > all*3/4 {
			t.Errorf("%d of %d page faults under the write lock", locked, all)
		}
	}
	order := rand.New(rand.NewPCG(1, 2))

	t.Run("flush", func(t *testing.T) {
		ix := openTestIndex(t)
		ix.mapped.stop()
		ds := recordBlobsInOrder(t, ix, 30_000)
		now := time.Now()
		// Their last pulls, in bulk: the buckets of the manifests' pulls
		// and counts fill up as much as the blobs'.
		for _, d := range ds {
			ix.TouchManifest(d, now)
			ix.CountPull(d)
		}
		if err := ix.Flush(); err != nil {
			t.Fatal(err)
		}
		order.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
		later := now.Add(time.Hour)
		for _, d := range ds[:300] {
			ix.Touch(d, later)
			ix.TouchManifest(d, later)
			ix.CountPull(d)
		}
		check(t, ix, ix.Flush)
	})

	t.Run("unroot", func(t *testing.T) {
		ix, _ := filledIndex(t, 60_000) // tags "library/r{i/100}:v{i}" naming digest i
		ix.mapped.stop()
		var us []Unroot
		for _, i := range order.Perm(60_000)[:300] {
			us = append(us, Unroot{Upstream: "docker.io", Repo: fmt.Sprintf("library/r%d", i/100),
				Digest: digest.FromString(strconv.Itoa(i)), Tags: []string{fmt.Sprintf("v%d", i)}})
		}
		check(t, ix, func() error { return ix.UnrootImages(us) })
	})
}

// recordBlobsInOrder records n blobs (~10 MiB of records, links and
// holders at 30,000) in one transaction, in key order: in any other the
// race detector takes ~30 s over bbolt's inserts. It returns their
// digests, sorted.
func recordBlobsInOrder(t *testing.T, ix *Index, n int) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	for i := range n {
		ds = append(ds, digest.FromString(fmt.Sprint("blob ", i)))
	}
	slices.Sort(ds)
	now := time.Now()
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		for _, d := range ds {
			if err := ix.putContentRecord(tx, bucketBlobs, []byte(d), BlobRecord{Size: 10, FetchedAt: now, LastAccess: now}); err != nil {
				return err
			}
			if err := link(tx, "docker.io", "library/r", d); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ds
}
