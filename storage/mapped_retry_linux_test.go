package storage

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A full read whose release finds the watcher walking its branch pages
// (the branch cache locked) waits for the walk to end, and releases,
// instead of mapping on (a walk slowed by a loaded machine let the
// collection's read map tens of MiB more): RssFile faked, the walk stood
// for by the cache's lock.
func TestFullReadWaitsForTheWalk(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop() // the real watcher: its walks would take the lock too
	err := ix.db.View(func(tx *bolt.Tx) error {
		rss := int64(100 << 20)
		r := ix.releaser(tx)
		r.rss = func() (int64, bool) { return rss, true }
		r.base, r.ok = rss, true
		found := make(chan struct{}, 1)
		r.busy = func() { found <- struct{}{} }
		look := func() { r.read(make([]byte, releaseCheckEvery), nil) }

		ix.branches.mu.Lock() // the watcher walks
		rss += r.budget - 1
		look() // under the budget: no release tried
		if r.releases != 0 || len(found) != 0 {
			t.Fatalf("under the budget: %d releases, %d found busy; want 0, 0", r.releases, len(found))
		}
		rss++ // the read mapped its budget
		done := make(chan struct{})
		go func() {
			defer close(done)
			look()
		}()
		<-found                 // the look found the walk
		ix.branches.mu.Unlock() // which ends
		<-done
		if r.releases != 1 || r.base != rss {
			t.Fatalf("after the walk: %d releases, base %d MiB; want 1, %d", r.releases, r.base>>20, rss>>20)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A full read's last release (done) waits for a walk holding the branch
// cache, and then releases: the read has no later look to try again at.
func TestFullReadsLastReleaseWaitsForTheWalk(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop()
	err := ix.db.View(func(tx *bolt.Tx) error {
		r := ix.releaser(tx)
		found := make(chan struct{})
		r.busy = func() { close(found) }
		ix.branches.mu.Lock() // the watcher walks
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.done()
		}()
		<-found                 // done found the walk
		ix.branches.mu.Unlock() // which ends
		<-done
		if r.releases != 1 {
			t.Fatalf("done made %d releases, want 1", r.releases)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// In a write transaction a release that finds the watcher walking is
// not retried (the base moves up, as before) and the last release does
// not wait for the walk: the write lock is not held for either (were
// done to wait, this test would hang on the lock it holds itself).
func TestAWritesReleaseDoesNotWaitForTheWalk(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop()
	err := ix.db.Update(func(tx *bolt.Tx) error {
		rss := int64(100 << 20)
		r := ix.releaser(tx)
		r.rss = func() (int64, bool) { return rss, true }
		r.base, r.ok = rss, true
		busy := 0
		r.busy = func() { busy++ }
		ix.branches.mu.Lock() // the watcher walks
		defer ix.branches.mu.Unlock()
		rss += r.budget
		r.lookedUp(releaseCheckEvery / lookupWeight)
		if r.releases != 0 || busy != 1 || r.base != rss {
			t.Fatalf("a look in a write: %d releases, %d found busy, base %d MiB; want 0, 1, %d", r.releases, busy, r.base>>20, rss>>20)
		}
		r.done()
		if r.releases != 0 || busy != 2 {
			t.Fatalf("done in a write: %d releases, %d found busy; want 0, 2", r.releases, busy)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
