package storage

import (
	"cmp"
	"time"

	bolt "go.etcd.io/bbolt"
)

// writeLimits bound one write transaction of a pass over many keys (an
// eviction, a collection's sweep, a flush): while it runs, every other
// write (a pull recording a blob) waits for bbolt's write lock.
type writeLimits struct {
	// keys is about how many keys a transaction writes.
	keys int
	// pages, if > 0, is about how many pages of the tree a transaction
	// changes (bbolt's nodes: the leaves its keys are in and the branches
	// above them), which its commit writes: keys close together share a
	// page, keys far apart do not.
	pages int64
	// hold is how long a transaction takes more work: past it, it
	// commits what it did.
	hold time.Duration
	// now is the clock hold is measured with (tests give their own).
	now func() time.Time
	// mapped, if > 0, is the budget of the releaser that counts the
	// items' lookups (see lookupWeight; default fullReadBudget: tests
	// set less).
	mapped int64
}

// The default write limits keep each write of a pass well under 100 ms.
// Every commit writes the pages the transaction changed (and, outside a
// pass, bbolt's whole freelist: BeginPass), then syncs twice: what costs
// is the number of commits more than their size. So a transaction is
// bounded by the pages it changes: 256 (1 MiB), a few milliseconds of
// work, are ~256 digests of a collection (scattered over the tree) but
// thousands of an eviction's tags (side by side in a few pages). 50 ms
// leaves room for the commit on a loaded machine.
const (
	defaultWriteKeys  = 4096
	defaultWritePages = 256
	defaultWriteHold  = 50 * time.Millisecond
)

// budget is what is left of one transaction's limits.
type budget struct {
	lim   writeLimits
	tx    *bolt.Tx
	start time.Time
	keys  int
}

// spend counts keys written; it reports whether the transaction should
// commit now (it has written enough keys, changed enough pages, or run
// long enough).
func (b *budget) spend(keys int) bool {
	b.keys += keys
	if b.keys >= b.lim.keys || b.lim.now().Sub(b.start) >= b.lim.hold {
		return true
	}
	// bbolt makes a node of each page a transaction changes.
	st := b.tx.Stats()
	return b.lim.pages > 0 && st.GetNodeCount() >= b.lim.pages
}

// limits are the index's write limits (the defaults unless a test set
// others).
func (ix *Index) limits() writeLimits {
	if ix.writeLimits != nil {
		return *ix.writeLimits
	}
	return writeLimits{keys: defaultWriteKeys, pages: defaultWritePages, hold: defaultWriteHold, now: time.Now}
}

// batchWrite is a write of many items (tags, digests, access times) in
// transactions bounded by the index's write limits: see writeSome and
// writeAll.
type batchWrite struct {
	// begin, if not nil, starts each transaction: it resets what the
	// transaction collects, and may refuse to go on (an error).
	begin func(tx *bolt.Tx) error
	// item writes item i and returns how many keys it wrote; one that
	// wrote none (skipped, kept) still counts for time.
	item func(tx *bolt.Tx, i int) (keys int, err error)
	// end, if not nil, ends each transaction, after its last item.
	end func(tx *bolt.Tx) error
	// committed, if not nil, runs after each commit, outside the write
	// lock, given the items the transaction took: [from, to).
	committed func(from, to int) error
	// touch, if not nil, reads what item i will read, in a read
	// transaction before the write lock (prefault), and returns how many
	// lookups it made.
	touch func(tx *bolt.Tx, i int) (lookups int)
}

// writeSome writes items from, from+1, ... of n in one transaction,
// until the write limits stop it; it returns the first item it did not
// take and how long it held the write lock.
func (ix *Index) writeSome(n, from int, w batchWrite) (to int, held time.Duration, err error) {
	// What the filesystem changed meanwhile (a sweep's removals) is
	// synced now, not by this transaction's commit under the lock.
	ix.flushFS()
	lim := ix.limits()
	mapped := cmp.Or(lim.mapped, fullReadBudget)
	touched, touchedOK := ix.prefault(n, from, w.touch, mapped/2, 2*cmp.Or(int(lim.pages), lim.keys))
	var rel *releaser
	held, err = ix.update(func(tx *bolt.Tx, b *budget) error {
		to = from
		if w.begin != nil {
			if err := w.begin(tx); err != nil {
				return err
			}
		}
		rel = ix.releaser(tx)
		rel.commitFirst = true
		rel.budget = mapped
		if touchedOK && rel.ok {
			// What the prefault mapped counts in the transaction's budget.
			rel.base = min(rel.base, touched)
		}
		for to < n {
			keys, err := w.item(tx, to)
			if err != nil {
				return err
			}
			rel.lookedUp(max(keys, 1))
			to++
			if b.spend(keys) || rel.over {
				break
			}
		}
		if w.end != nil {
			return w.end(tx)
		}
		return nil
	})
	ix.releaseCommitted(rel)
	if err == nil && w.committed != nil {
		err = w.committed(from, to)
	}
	return to, held, err
}

// A batch's items fault in the leaves they read (see lookupWeight), and
// on this project's machine a fault is dear: an eviction's forgets at
// 100k images took ~43 faults per transaction, ~4.7 s of CPU in all
// under the write lock (~40 µs a fault; in a CPU profile of
// BenchmarkScale, bbolt's Page.FastCheck, the first read of a page: ~17%
// of the time the lock was held), and a fault is where this guest's
// hypervisor may keep the CPU for ~100 ms (docs/performance-rounds.md,
// "Round 18"). prefault reads what the next transaction's items will
// read (the batch's touch) in a read transaction, before the write lock,
// so that the faults are taken there and the transaction finds its
// leaves mapped. It reads at most most lookups (about what a transaction
// takes: read again, mapped, they cost little), and stops once RssFile
// grew budget (half the transaction's: what it maps counts in the
// transaction's releaser, so a batch maps no more than before). It
// returns RssFile before it; ok is false if it read nothing (no touch,
// or RssFile unknown, where what it maps could not be bounded).
func (ix *Index) prefault(n, from int, touch func(*bolt.Tx, int) int, budget int64, most int) (base int64, ok bool) {
	if touch == nil || from >= n {
		return 0, false
	}
	_ = ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		if !rel.ok {
			return nil
		}
		// As a batch's transaction: past its budget it only says so.
		rel.commitFirst, rel.budget = true, budget
		base, ok = rel.base, true
		for i, looked := from, 0; i < n && looked < most && !rel.over; i++ {
			k := max(touch(tx, i), 1)
			rel.lookedUp(k)
			looked += k
		}
		return nil
	})
	return base, ok
}

// touchKey returns a batch's touch for items that each read key(i) in
// bucket (and write it).
func touchKey(bucket []byte, key func(i int) []byte) func(*bolt.Tx, int) int {
	return func(tx *bolt.Tx, i int) int {
		if b := tx.Bucket(bucket); b != nil {
			b.Get(key(i))
		}
		return 1
	}
}

// releaseCommitted releases the index's mapped pages after a batch's
// commit if RssFile grew rel's budget since the transaction began: its
// items' lookups (the releaser ended the transaction for them: over), or
// the commit, which faults every page the transaction changed back in
// (bbolt reads each one's header as it frees it), up to the write limits'
// 256 pages, ~30 MiB at 100k images, which the next transaction's
// releaser would not count. A nil rel does nothing.
func (ix *Index) releaseCommitted(rel *releaser) {
	if rel == nil || !rel.ok {
		return
	}
	if n, ok := ix.statm.rssFile(); !ok || n-rel.base < rel.budget {
		return
	}
	_ = ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseKept(tx, false) // (a walk meanwhile drops the same pages)
		return nil
	})
}

// A batch's items read the tree through bbolt's mapping (its Get and Put
// fault each key's leaf in, and the kernel maps a large folio around it,
// ~100 KiB), and thousands of random keys (Flush's access times, an
// eviction's unroots) are scattered over thousands of leaves: at 100k
// images, a Flush of ~4,000 access times mapped ~65 MiB between two of
// the watcher's looks. writeSome counts each key an item writes as a
// lookup of a releaser, and once RssFile grew the releaser's budget the
// transaction commits and releaseCommitted drops the pages: a release
// inside the transaction would hold the write lock meanwhile (11–17 ms
// traced on a loaded machine: docs/performance-rounds.md, "Round 18").
//
// lookupWeight is the bytes of records a lookup counts as in a releaser:
// it looks at RssFile every releaseCheckEvery/lookupWeight lookups (16,
// ~1.6 MiB of faults between two looks).
const lookupWeight = releaseCheckEvery / 16

// lookedUp counts n lookups through the mapping (see lookupWeight).
func (r *releaser) lookedUp(n int) {
	if r != nil {
		r.n += n * lookupWeight
		r.read(nil, nil) // nothing more: read's checks
	}
}

// writeAll writes all n items in as many transactions as the write
// limits need; it returns how long the longest held the write lock.
func (ix *Index) writeAll(n int, w batchWrite) (longest time.Duration, err error) {
	for done := 0; done < n; {
		var held time.Duration
		done, held, err = ix.writeSome(n, done, w)
		longest = max(longest, held)
		if err != nil {
			return longest, err
		}
	}
	return longest, nil
}

// pair is a key and its value, taken from a map to be written in
// batches (access times, pull counts).
type pair[K comparable, V any] struct {
	k K
	v V
}

// pairs lists m's keys and values (in no order).
func pairs[K comparable, V any](m map[K]V) []pair[K, V] {
	out := make([]pair[K, V], 0, len(m))
	for k, v := range m {
		out = append(out, pair[K, V]{k, v})
	}
	return out
}

// SetWriteLimits changes how much one write transaction of a pass over
// many keys (UnrootImages, Forget, Flush) does before it commits: about
// keys keys, or what it does in hold, whatever the pages they change.
// Call it before the index is used; the defaults (4,096 keys or 256
// changed pages, 50 ms) suit a mirror, small ones a test.
func (ix *Index) SetWriteLimits(keys int, hold time.Duration) {
	ix.writeLimits = &writeLimits{keys: max(keys, 1), hold: hold, now: time.Now}
}
