package storage

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// presentPages reports, for each of the n pages of the mapping at start,
// whether it is mapped in the process's page tables (/proc/self/pagemap,
// bit 63), which is what RssFile counts.
func presentPages(t *testing.T, start uintptr, n int) []bool {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	ps := uintptr(os.Getpagesize())
	buf := make([]byte, 8*n)
	if _, err := f.ReadAt(buf, int64(start/ps*8)); err != nil {
		t.Skip(err)
	}
	out := make([]bool, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[8*i:])&(1<<63) != 0
	}
	return out
}

// TestReleaseLeavesKeepsBranches checks the watcher's release: after it,
// the pages of the hot buckets' branch pages (every page bbolt itself
// calls a branch page, in an index where only tags have more than a
// leaf) and the meta pages stay mapped, no leaf but the root bucket's
// does (a few stale ones aside), and every record still reads. releaseMapped (the release before)
// keeps none of them.
func TestReleaseLeavesKeepsBranches(t *testing.T) {
	const n = 60_000 // ~12 MiB of tags: a tree of 3 levels
	ix, _ := filledIndex(t, n)
	ix.mapped.stop() // releases come from the test alone
	ps := os.Getpagesize()
	touchAll := func() {
		if err := ix.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketTags).ForEach(func(k, v []byte) error { return nil })
		}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(release func(tx *bolt.Tx), wantBranches bool) {
		t.Helper()
		touchAll()
		if err := ix.db.View(func(tx *bolt.Tx) error {
			release(tx)
			pages := int(tx.Size()) / ps
			present := presentPages(t, ix.db.Info().Data, pages)
			rootLeaf := int(tx.Cursor().Bucket().Root())
			var branches, keptBranches, keptLeaves int
			for id := 2; id < pages; id++ {
				info, err := tx.Page(id)
				if err != nil || info == nil {
					continue
				}
				switch {
				case info.Type == "branch":
					branches++
					if present[id] {
						keptBranches++
					}
				case info.Type == "leaf" && id != rootLeaf && present[id]:
					keptLeaves++
				}
			}
			if branches < 10 {
				t.Fatalf("%d branch pages: the test cannot tell them from leaves", branches)
			}
			if wantBranches && (keptBranches != branches || !present[0] || !present[1]) {
				t.Errorf("%d of %d branch pages mapped after the release, meta pages %v %v", keptBranches, branches, present[0], present[1])
			}
			if !wantBranches && keptBranches > branches/10 {
				t.Errorf("releaseMapped kept %d of %d branch pages mapped", keptBranches, branches)
			}
			// A few stale leaves (free, not yet reported so) stay mapped
			// after either release; the tree has ~3,000.
			if keptLeaves > 16 {
				t.Errorf("%d leaves mapped after the release", keptLeaves)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	check(func(tx *bolt.Tx) { ix.releaseMapped(tx) }, false)
	var c branchCache
	check(func(tx *bolt.Tx) {
		if kept := ix.releaseLeaves(tx, &c); kept == 0 {
			t.Error("releaseLeaves kept nothing")
		}
	}, true)
	// Again from the cached runs (nothing written since).
	check(func(tx *bolt.Tx) { ix.releaseLeaves(tx, &c) }, true)
	// A write moves pages (copy on write): the runs are walked again.
	fillTags(t, ix, n, 2_000)
	check(func(tx *bolt.Tx) { ix.releaseLeaves(tx, &c) }, true)
	for i := range n + 2_000 {
		if rec, ok, err := ix.Tag("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i)); err != nil || !ok || rec.Digest != digest.FromString(strconv.Itoa(i)) {
			t.Fatalf("tag %d after the releases: %+v %v %v", i, rec, ok, err)
		}
	}
}
