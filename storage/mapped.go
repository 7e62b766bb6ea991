package storage

import (
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A read of every record (start-up's count, `ls`, the collection, the
// eviction's model) reads the index through bbolt's mapping, which would
// leave all of it resident at once (RssFile: at 100k images, ~900 MiB).
// The releaser drops the mapped pages as the read goes (releaseKept: all
// but the branch pages the watcher keeps). It used to drop them every 4
// MiB of records, but the records of one bucket are spread over the file
// and each fault maps a large folio around its page (~128 KiB), so 4 MiB
// of records mapped 100–225 MiB between two releases at 100k. It now
// looks at the process's RssFile every releaseCheckEvery bytes of records
// (/proc/self/statm, kept open: statm) and drops the pages once it grew
// fullReadBudget since the read began or last dropped them: what is
// mapped is bounded, not what is read.
const (
	// releaseCheckEvery is how many bytes of records the releaser reads
	// between two looks at RssFile.
	releaseCheckEvery = 128 << 10
	// fullReadBudget is how much RssFile may grow during a full read
	// before the releaser drops the pages.
	fullReadBudget = 16 << 20
	// releaseEvery is how many bytes of records it reads between two
	// releases where RssFile is not known.
	releaseEvery = 4 << 20
)

// releaser releases a read transaction's mapped pages (releaseKept) as
// a read of many records goes, and when it is done. A nil releaser does
// nothing.
type releaser struct {
	ix *Index
	tx *bolt.Tx
	n  int
	// base is RssFile when the read began or last released (ok: known).
	base int64
	ok   bool
	// budget is fullReadBudget (tests set less).
	budget int64
	// rss reads RssFile: the index's statm (tests fake it).
	rss func() (int64, bool)
	// releases counts the releases during the read (tests); busy, if
	// not nil, is called when a release finds the branch cache busy
	// (tests).
	releases int
	busy     func()
	// commitFirst: the read is a batch's write transaction (writeSome),
	// which past its budget sets over and commits, to release after the
	// commit (releaseCommitted) rather than under the write lock, where a
	// release took 11–17 ms on a loaded machine.
	commitFirst, over bool
}

// releaser returns a releaser for a read transaction of ix.
func (ix *Index) releaser(tx *bolt.Tx) *releaser {
	r := &releaser{ix: ix, tx: tx, budget: fullReadBudget, rss: ix.statm.rssFile}
	r.base, r.ok = r.rss()
	return r
}

// read counts a record read.
func (r *releaser) read(k, v []byte) {
	if r == nil {
		return
	}
	r.n += len(k) + len(v)
	if !r.ok {
		if r.n >= releaseEvery {
			r.n = 0
			r.release(false)
		}
		return
	}
	if r.n < releaseCheckEvery {
		return
	}
	r.n = 0
	n, ok := r.rss()
	switch {
	case !ok:
	case n < r.base:
		r.base = n // released by another read, the watcher or the kernel
	case n-r.base >= r.budget && r.commitFirst:
		r.over = true
	case n-r.base >= r.budget:
		// While the watcher walks its branch pages (its first walk at
		// start takes ~0.1 s at 100k images, longer on a loaded
		// machine) a release finds the branch cache busy. A read waits
		// for the walk to end: going on, it mapped what it read
		// meanwhile (the collection's and the eviction's reads of the
		// content records: the index's resident pages 72–79 MiB at
		// 100k, where the kept branch pages are ~21 MiB and a read's
		// budget 16). A write transaction (a sum of the stored total)
		// does not: such waits under the write lock held eviction
		// batches 110–485 ms at 100k (docs/performance-rounds.md, "Round
		// 12: start-up and memory"); its base moves up, and the walk,
		// when it ends, drops the same pages. (A batch's transaction
		// does not release at all: commitFirst.)
		r.release(!r.tx.Writable())
		if n, ok := r.rss(); ok {
			r.base = n
		}
	}
}

// release releases the pages now and reports whether it did: it does
// not while the watcher walks the branch pages (releaseKept), unless
// wait, when it waits for the walk to end.
func (r *releaser) release(wait bool) bool {
	if !r.ix.releaseKept(r.tx, false) {
		if r.busy != nil {
			r.busy()
		}
		if !wait {
			return false
		}
		r.ix.releaseKept(r.tx, true)
	}
	r.releases++
	return true
}

// done releases the pages once the read is over (still inside the
// transaction), waiting for a walk of the watcher's to end: the read
// has no later look to try again at. In a write transaction (a sum of
// the stored total that cannot trust its record) it does not wait: the
// write lock is not held for a walk.
func (r *releaser) done() {
	if r != nil {
		r.release(!r.tx.Writable())
	}
}

// Lookups and writes fault the index's pages in one by one, and the
// kernel maps the page cache around each fault (fault-around: 64 KiB,
// whole large folios where the file has them), so random lookups over a
// large index make most of it resident within seconds: at 100k images,
// ~570 MiB after 4,000 pulls. madvise(MADV_RANDOM), which bbolt sets,
// does not stop it, nor does MADV_NOHUGEPAGE (measured: ~105 KiB mapped
// per random touch of the 100k index either way). A request's lookups
// on a large index read their leaf from the file (mapped_lookup.go);
// other lookups and writes still fault. A watcher bounds what they map:
// when the process's file-backed resident memory has grown by
// mappedBudget since the index last dropped its pages, it drops them
// again, in a read transaction, all but the hot buckets' branch pages
// (releaseLeaves: a lookup then faults its leaf alone, not every level
// of the tree; mapped_branches.go). What is used faults back in from the
// page cache.
//
// A fault maps up to a whole large folio of the page cache (~100 KiB per
// lookup at 100k images on a copied index), so between two looks the
// requests overshoot the budget: looking every 50 ms, RssFile peaked at
// 150–310 MiB at 100k. Every 10 ms, with half the budget (the branch
// pages kept, ~21 MiB at 100k, count in the base), it peaks at 70–110.
// A look reads /proc/self/statm (statm: a pread).
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
	// walked is closed after the first release (the first walk of the
	// branch pages): see waitFirstRelease.
	walked chan struct{}
	once   sync.Once
	done   sync.WaitGroup
	// releases counts the releases it made (tests).
	releases atomic.Int64
}

// watchMapped starts the watcher of ix's mapped pages, if the platform
// tells its resident file-backed memory (nil otherwise).
func (ix *Index) watchMapped() *mappedWatch {
	if _, ok := ix.statm.rssFile(); !ok {
		return nil
	}
	w := &mappedWatch{budget: mappedBudget, stopc: make(chan struct{}), walked: make(chan struct{})}
	w.done.Go(func() {
		t := time.NewTicker(mappedCheckEvery)
		defer t.Stop()
		// From what is resident after a release: start-up's reads may
		// have left pages behind.
		base := w.release(ix, 0)
		close(w.walked)
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
	n, ok := ix.statm.rssFile()
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
		ix.releaseLeaves(tx, &ix.branches)
		return nil
	}) != nil {
		return base
	}
	w.releases.Add(1)
	n, ok := ix.statm.rssFile()
	if !ok {
		return base
	}
	return n
}

// waitFirstRelease waits for the watcher's first release, or its stop; a
// nil watcher does not wait. That release walks the hot buckets' branch
// pages (~100 ms at 100k images) holding the branch cache, and a full
// read's releases meanwhile wait for it (releaser.read): a full read
// begun beside it would wait once it had mapped its budget (before a
// read's releases were tried again, the fills' resume at start mapped
// what it read until the walk ended: RssFile 116–178 MiB at 100k).
func (w *mappedWatch) waitFirstRelease() {
	if w == nil {
		return
	}
	select {
	case <-w.walked:
	case <-w.stopc:
	}
}

// StopWatchingMapped stops the watcher of the index's mapped pages once
// it has made its first release; reads still release what they map. For
// a test that opens the index in a synctest bubble: the watcher checks
// every 10 ms of the bubble's clock, a read of /proc/self/statm each, and
// a test waiting hours of it spent ~90% of its time there.
func (ix *Index) StopWatchingMapped() { ix.mapped.stop() }

// stop stops the watcher and waits for it; a nil watcher does nothing.
func (w *mappedWatch) stop() {
	if w == nil {
		return
	}
	w.once.Do(func() { close(w.stopc) })
	w.done.Wait()
}
