package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"unsafe"

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

// branchPages returns which pages of tx's snapshot bbolt calls branch
// pages, and the root bucket's leaf.
func branchPages(tx *bolt.Tx) (branch []bool, rootLeaf int) {
	pages := int(tx.Size()) / os.Getpagesize()
	branch = make([]bool, pages)
	for id := 2; id < pages; id++ {
		if info, err := tx.Page(id); err == nil && info != nil && info.Type == "branch" {
			branch[id] = true
		}
	}
	return branch, int(tx.Cursor().Bucket().Root())
}

// countPresent counts the mapped pages of the index's first n pages, and
// those of them that are neither branch pages nor the meta pages nor the
// root bucket's leaf.
func countPresent(t *testing.T, ix *Index, n int, branch []bool, rootLeaf int) (all, leaves int) {
	t.Helper()
	for id, p := range presentPages(t, ix.db.Info().Data, n) {
		if !p {
			continue
		}
		all++
		if id >= 2 && id != rootLeaf && (id >= len(branch) || !branch[id]) {
			leaves++
		}
	}
	return all, leaves
}

// TestBranchWalkReadsTheFile checks the watcher's walk: with nothing
// known to be mapped it reads every page from the file and maps none
// (through the mapping, each fault would map a large folio around its
// page); after a write it reads the pages it mapped before through the
// mapping and only the new ones from the file, and finds the same runs
// as a walk of the file alone, mapping nothing new.
func TestBranchWalkReadsTheFile(t *testing.T) {
	const n = 60_000
	ix, path := filledIndex(t, n)
	ix.mapped.stop()
	var branch []bool
	var rootLeaf int
	if err := ix.db.View(func(tx *bolt.Tx) error {
		branch, rootLeaf = branchPages(tx) // maps every page: released next
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ix.releaseAll(t)
	ps := os.Getpagesize()
	walk := func(tx *bolt.Tx, known []pageRun) ([]pageRun, *branchWalk) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		start := ix.db.Info().Data
		w := &branchWalk{
			data:     unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&start))), tx.Size()),
			file:     func() io.ReaderAt { return f },
			known:    known,
			pageSize: uint64(ps),
		}
		return branchRuns(tx, w, hotBuckets), w
	}
	if err := ix.db.View(func(tx *bolt.Tx) error {
		// What bbolt itself maps to open the buckets (the meta pages, the
		// root bucket's leaf) is not the walk's.
		for _, b := range hotBuckets {
			tx.Bucket(b)
		}
		pages := int(tx.Size()) / ps
		before, _ := countPresent(t, ix, pages, nil, 0)
		runs, w := walk(tx, nil)
		if after, _ := countPresent(t, ix, pages, nil, 0); after != before {
			t.Errorf("a walk of the file mapped %d pages", after-before)
		}
		if len(runs) < 2 || w.mappedReads != 0 || w.fileReads < 10 {
			t.Errorf("walk of the file: %d runs, %d pages read from the file, %d through the mapping", len(runs), w.fileReads, w.mappedReads)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The watcher's release maps the branch pages, nothing else.
	if err := ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseLeaves(tx, &ix.branches)
		var branches, mapped, leaves int
		for id, p := range presentPages(t, ix.db.Info().Data, len(branch)) {
			switch {
			case branch[id]:
				branches++
				if p {
					mapped++
				}
			case p && id >= 2 && id != rootLeaf:
				leaves++
			}
		}
		if branches < 10 || mapped != branches || leaves > 16 {
			t.Errorf("after the first release %d of %d branch pages mapped, %d leaves", mapped, branches, leaves)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fillTags(t, ix, n, 2_000)
	// The test's own reads of every page (which are branch pages) map
	// them: released again before the walk, from the runs of before the
	// write (the cache's snapshot is still the old one).
	if err := ix.db.View(func(tx *bolt.Tx) error {
		branch, _ = branchPages(tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseKept(tx, false)
		known := ix.branches.runs
		pages := int(tx.Size()) / ps
		for _, b := range hotBuckets {
			tx.Bucket(b) // bbolt's own read of the root bucket's new leaf
		}
		before, _ := countPresent(t, ix, pages, nil, 0)
		mixed, w := walk(tx, known)
		after, _ := countPresent(t, ix, pages, nil, 0)
		if after != before {
			t.Errorf("the walk after a write mapped %d pages (%d -> %d)", after-before, before, after)
		}
		if w.mappedReads == 0 || w.fileReads >= w.mappedReads {
			t.Errorf("walk after a write: %d pages read from the file, %d through the mapping", w.fileReads, w.mappedReads)
		}
		file, _ := walk(tx, nil)
		if !slices.Equal(mixed, file) {
			t.Errorf("walk through the known pages found %v, the file alone %v", mixed, file)
		}
		var found int
		for _, r := range file {
			for id := r.first; id < r.first+r.n; id++ {
				if int(id) < len(branch) && branch[id] {
					found++
				}
			}
		}
		want := 0
		for _, b := range branch {
			if b {
				want++
			}
		}
		if found != want {
			t.Errorf("the walk found %d of the %d branch pages", found, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestPopulateBoundsMapped checks that mapping the branch pages maps a
// batch at a time: after each batch no more than the batch's pages and
// what their faults mapped around them (a large folio each at most) are
// mapped, however many runs there are; at the end every run's pages are.
func TestPopulateBoundsMapped(t *testing.T) {
	ps := os.Getpagesize()
	const pages, every, batch = 8192, 64, 4 // 32 MiB, a run every 256 KiB
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, bytes.Repeat([]byte{1}, pages*ps), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := syscall.Mmap(int(f.Fd()), 0, pages*ps, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(data)
	// As the index's mapping (adviseMapping): a partial drop of a
	// PMD-mapped folio would drop all of it.
	adviseMapping(uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)))
	start := uintptr(unsafe.Pointer(&data[0]))
	count := func() (n int) {
		for _, p := range presentPages(t, start, pages) {
			if p {
				n++
			}
		}
		return n
	}
	// What one fault maps here: a large folio of the page cache.
	_ = populate(data, start, uintptr(ps), []pageRun{{0, 1}}, nil, batch, nil)
	perFault := count()
	dropRanges(gaps(start, start, start+uintptr(len(data)), uintptr(ps), nil))
	var runs []pageRun
	for id := uint64(every); id < pages; id += every {
		runs = append(runs, pageRun{id, 1})
	}
	// Known runs are not touched: the first half is "already mapped".
	known := runs[:len(runs)/2]
	most, batches := 0, 0
	sum := populate(data, start, uintptr(ps), runs, known, batch, func() {
		batches++
		most = max(most, count())
	})
	if sum != len(runs)-len(known) {
		t.Fatalf("read %d bytes of 1, want %d", sum, len(runs)-len(known))
	}
	if want := (len(runs) - len(known)) / batch; batches < want-1 {
		t.Fatalf("%d batches, want about %d", batches, want)
	}
	// A batch's faults and what the last one mapped past its end, against
	// 64 faults' worth unbatched.
	if most > (batch+1)*perFault {
		t.Errorf("up to %d pages mapped between batches (a fault maps %d)", most, perFault)
	}
	present := presentPages(t, start, pages)
	for _, r := range runs[len(known):] {
		if !present[r.first] {
			t.Fatalf("page %d not mapped after populate", r.first)
		}
	}
}

// TestFullReadReleasesByMapped checks the releaser: during a read of
// every record it drops the mapped pages whenever RssFile grew its budget,
// so that what is mapped stays near the budget; releasing by record bytes
// instead (what it does where RssFile is not known) lets 4 MiB of
// records map more.
func TestFullReadReleasesByMapped(t *testing.T) {
	const n = 60_000 // ~9 MiB of tag records
	ix, _ := filledIndex(t, n)
	ix.mapped.stop()
	if _, ok := residentFileBytes(); !ok {
		t.Skip("no /proc/self/statm")
	}
	ps := os.Getpagesize()
	read := func(byMapped bool) (most, releases int) {
		ix.releaseAll(t)
		if err := ix.db.View(func(tx *bolt.Tx) error {
			r := ix.releaser(tx)
			r.budget = 512 << 10
			r.ok = byMapped
			i := 0
			err := tx.Bucket(bucketTags).ForEach(func(k, v []byte) error {
				r.read(k, v)
				if i++; i%500 == 0 {
					all, _ := countPresent(t, ix, int(tx.Size())/ps, nil, 0)
					most = max(most, all)
				}
				return nil
			})
			r.done()
			releases = r.releases
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return most * ps, releases
	}
	most, releases := read(true)
	if most > 2<<20 || releases < 4 {
		t.Errorf("releasing by RssFile: up to %d KiB mapped, %d releases", most>>10, releases)
	}
	if most, _ := read(false); most < 4<<20 {
		t.Errorf("releasing every 4 MiB of records mapped up to %d KiB only: the test cannot tell", most>>10)
	}
}

// TestFullReadKeepsBranches checks that a read of every record keeps the
// branch pages the watcher mapped: a release of a full read drops the
// leaves it read, not the pages lookups need on their way.
func TestFullReadKeepsBranches(t *testing.T) {
	const n = 60_000
	ix, _ := filledIndex(t, n)
	ix.mapped.stop()
	if err := ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseLeaves(tx, &ix.branches)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tags := 0
	if _, err := ix.ReadImageRecords(nil, func(*TagInfo) { tags++ }); err != nil || tags != n {
		t.Fatalf("ReadImageRecords: %d tags, %v", tags, err)
	}
	if err := ix.db.View(func(tx *bolt.Tx) error {
		// Before branchPages, whose reads map every page.
		present := presentPages(t, ix.db.Info().Data, int(tx.Size())/os.Getpagesize())
		branch, rootLeaf := branchPages(tx)
		var branches, kept, leaves int
		for id, b := range branch {
			if b {
				branches++
				if present[id] {
					kept++
				}
			}
		}
		for id, p := range present {
			if p && id >= 2 && id != rootLeaf && !branch[id] {
				leaves++
			}
		}
		if branches < 10 || kept != branches {
			t.Errorf("after a full read %d of %d branch pages mapped", kept, branches)
		}
		if leaves > 16 {
			t.Errorf("after a full read %d leaves mapped", leaves)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
