package storage

import (
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// releaseEvery is how many bytes of records a read of every record
// reads between two releases of the mapped pages: it bounds the index's
// resident pages such a read adds (a little more than this: the pages
// also hold the tree's branches and free space).
const releaseEvery = 4 << 20

// releaser releases a read transaction's mapped pages (releaseMapped) as
// a read of many records goes, after every releaseEvery bytes, and when
// it is done: a read of every record of a 100k-image index would
// otherwise leave all of it resident at once. A nil releaser does
// nothing.
type releaser struct {
	ix *Index
	tx *bolt.Tx
	n  int
}

// releaser returns a releaser for a read transaction of ix.
func (ix *Index) releaser(tx *bolt.Tx) *releaser { return &releaser{ix: ix, tx: tx} }

// read counts a record read.
func (r *releaser) read(k, v []byte) {
	if r == nil {
		return
	}
	if r.n += len(k) + len(v); r.n >= releaseEvery {
		r.n = 0
		r.ix.releaseMapped(r.tx)
	}
}

// done releases the pages once the read is over (still inside the
// transaction).
func (r *releaser) done() {
	if r != nil {
		r.ix.releaseMapped(r.tx)
	}
}

// Lookups and writes fault the index's pages in one by one, and the
// kernel maps the page cache around each fault (fault-around: 64 KiB,
// whole large folios where the file has them), so random lookups over a
// large index make most of it resident within seconds: at 100k images,
// ~570 MiB after 4,000 pulls. madvise(MADV_RANDOM), which bbolt sets,
// does not stop it. A watcher bounds it instead: when the process's
// file-backed resident memory has grown by mappedBudget since the index
// last dropped its pages, it drops them again, in a read transaction,
// all but the hot buckets' branch pages (releaseLeaves: a lookup then
// faults its leaf alone, not every level of the tree; mapped_branches.go).
// What the requests use faults back in from the page cache.
//
// A fault maps up to a whole large folio of the page cache (~100 KiB per
// lookup at 100k images on a copied index), so between two looks the
// requests overshoot the budget: looking every 50 ms, RssFile peaked at
// 150–310 MiB at 100k. Every 10 ms, with half the budget (the branch
// pages kept, ~21 MiB at 100k, count in the base), it peaks at 70–110.
// A look reads /proc/self/statm (~10 µs).
const (
	// mappedBudget is how much the resident mapped pages may grow before
	// they are dropped.
	mappedBudget = 16 << 20
	// mappedCheckEvery is how often the watcher looks.
	mappedCheckEvery = 10 * time.Millisecond
)

// mappedWatch is the goroutine that bounds the index's resident mapped
// pages (see mappedBudget).
type mappedWatch struct {
	budget int64
	stopc  chan struct{}
	once   sync.Once
	done   sync.WaitGroup
	// releases counts the releases it made (tests).
	releases atomic.Int64
	// branches are the branch pages a release keeps (releaseLeaves).
	branches branchCache
}

// watchMapped starts the watcher of ix's mapped pages, if the platform
// tells its resident file-backed memory (nil otherwise).
func (ix *Index) watchMapped() *mappedWatch {
	if _, ok := residentFileBytes(); !ok {
		return nil
	}
	w := &mappedWatch{budget: mappedBudget, stopc: make(chan struct{})}
	w.done.Go(func() {
		t := time.NewTicker(mappedCheckEvery)
		defer t.Stop()
		// From what is resident after a release: start-up's reads may
		// have left pages behind.
		base := w.release(ix, 0)
		for {
			select {
			case <-w.stopc:
				return
			case <-t.C:
			}
			base = w.check(ix, base)
		}
	})
	return w
}

// check releases ix's mapped pages if the resident file-backed memory is
// w.budget over base, and returns the new base.
func (w *mappedWatch) check(ix *Index, base int64) int64 {
	n, ok := residentFileBytes()
	if !ok {
		return base
	}
	if n < base {
		return n // released by a full read, or by the kernel
	}
	if n-base < w.budget {
		return base
	}
	return w.release(ix, base)
}

// release releases ix's mapped pages and returns the resident file-backed
// memory after (base if it cannot).
func (w *mappedWatch) release(ix *Index, base int64) int64 {
	if ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseLeaves(tx, &w.branches)
		return nil
	}) != nil {
		return base
	}
	w.releases.Add(1)
	n, ok := residentFileBytes()
	if !ok {
		return base
	}
	return n
}

// stop stops the watcher and waits for it; a nil watcher does nothing.
func (w *mappedWatch) stop() {
	if w == nil {
		return
	}
	w.once.Do(func() { close(w.stopc) })
	w.done.Wait()
}
