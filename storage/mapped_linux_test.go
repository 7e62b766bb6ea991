package storage

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// mappedRSS returns the resident KiB of the process's mappings of path
// (/proc/self/smaps).
func mappedRSS(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	kb, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		// A mapping's header: "start-end perms offset dev inode [path]".
		if fields := strings.Fields(l); len(fields) >= 5 && strings.Contains(fields[0], "-") && len(fields[1]) == 4 {
			in = fields[len(fields)-1] == path
			continue
		}
		if in && strings.HasPrefix(l, "Rss:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			kb += n
		}
	}
	return kb
}

// filledIndex opens a copy of an index of n tags (fillTags), closed when
// the test ends, and returns it and its path.
func filledIndex(t *testing.T, n int) (*Index, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "index.db")
	copyFilled(t, n, path)
	ix, err := OpenIndex(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	return ix, path
}

// TestReleaseMapped checks that a read of every record leaves the
// index's pages out of the process's RSS: a plain read of every tag makes
// the mapping resident; ReadImageRecords and Snapshot leave it small,
// with every record read.
func TestReleaseMapped(t *testing.T) {
	const n = 20_000 // ~4 MiB of index
	ix, path := filledIndex(t, n)
	// Releases come from the reads alone: the watcher's first release,
	// late on a busy machine, dropped the plain read's pages once.
	ix.mapped.stop()
	plain := func() {
		if err := ix.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketTags).ForEach(func(k, v []byte) error { return nil })
		}); err != nil {
			t.Fatal(err)
		}
	}
	plain()
	before := mappedRSS(t, path)
	if before < 2<<10 {
		t.Fatalf("a read of %d tags left %d KiB of the index resident: the test cannot see a release", n, before)
	}
	tags := 0
	if _, err := ix.ReadImageRecords(nil, func(*TagInfo) { tags++ }); err != nil || tags != n {
		t.Fatalf("ReadImageRecords: %d tags, %v", tags, err)
	}
	if after := mappedRSS(t, path); after > before/4 {
		t.Errorf("after ReadImageRecords %d KiB resident (after a plain read: %d)", after, before)
	}
	plain()
	if s, err := ix.Snapshot(); err != nil || len(s.Tags) != n {
		t.Fatalf("Snapshot: %v", err)
	}
	if after := mappedRSS(t, path); after > before/4 {
		t.Errorf("after Snapshot %d KiB resident (after a plain read: %d)", after, before)
	}
}

// TestReleaseMappedWhileWriting reads every record, releasing the pages,
// while another goroutine grows the index (bbolt remaps it) and others
// read single records: every read sees every record its transaction
// holds (run with -race).
func TestReleaseMappedWhileWriting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix, err := OpenIndex(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	const batch, batches = 2_000, 5
	fillTags(t, ix, 0, batch)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		defer close(stop)
		for b := 1; b < batches; b++ {
			fillTags(t, ix, b*batch, batch)
		}
	})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rec, ok, err := ix.Tag("docker.io", fmt.Sprintf("library/r%d", (i%batch)/100), fmt.Sprintf("v%d", i%batch))
			if err != nil || !ok || rec.Digest != digest.FromString(strconv.Itoa(i%batch)) {
				t.Errorf("tag %d: %+v %v %v", i%batch, rec, ok, err)
				return
			}
		}
	})
	last := 0
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		default:
		}
		tags := 0
		if _, err := ix.ReadImageRecords(nil, func(ti *TagInfo) {
			if ti.Digest != digest.FromString(strings.TrimPrefix(ti.Tag, "v")) {
				t.Errorf("tag %s: digest %s", ti.Tag, ti.Digest)
			}
			tags++
		}); err != nil {
			t.Fatal(err)
		}
		if tags < last || tags%batch != 0 {
			t.Fatalf("read %d tags after %d", tags, last)
		}
		last = tags
	}
	wg.Wait()
	if last != batch*batches {
		t.Errorf("last read %d tags, want %d", last, batch*batches)
	}
}

// TestMappingEnd finds a mapping's end as mmap made it, and nothing for
// an address no mapping starts at.
func TestMappingEnd(t *testing.T) {
	const size = 5 * 4096
	// A file's mapping: the kernel does not merge it with its neighbours.
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Skip(err)
	}
	defer syscall.Munmap(b)
	start := uintptr(unsafe.Pointer(&b[0]))
	if end, ok := mappingEnd(start); !ok || end != start+size {
		t.Errorf("mappingEnd(%#x) = %#x, %v; want %#x", start, end, ok, start+size)
	}
	if _, ok := mappingEnd(start + 4096); ok {
		t.Errorf("mappingEnd found a mapping starting inside another")
	}
}

// TestMappedWatch checks the watcher: lookups of single records leave
// the index's pages resident; a check finding the process's file-backed
// memory grown by its budget drops them but the branch pages, one that
// does not leaves them.
func TestMappedWatch(t *testing.T) {
	const n = 20_000 // ~4 MiB of index
	ix, path := filledIndex(t, n)
	ix.mapped.stop() // the test's own watcher below is the one checked
	ix.releaseAll(t)
	base, ok := residentFileBytes()
	if !ok {
		t.Skip("no /proc/self/statm")
	}
	for i := 0; i < n; i += 50 {
		if _, ok, err := ix.Tag("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i)); err != nil || !ok {
			t.Fatalf("tag %d: %v %v", i, ok, err)
		}
	}
	resident := mappedRSS(t, path)
	if resident < 1<<10 {
		t.Fatalf("lookups left %d KiB of the index resident: the test cannot see a release", resident)
	}
	// A budget above the growth: nothing released.
	w := &mappedWatch{budget: 1 << 40}
	if got := w.check(ix, base); got != base || w.releases.Load() != 0 || mappedRSS(t, path) < resident/2 {
		t.Errorf("under budget: base %d -> %d, %d releases, %d KiB resident (was %d)", base, got, w.releases.Load(), mappedRSS(t, path), resident)
	}
	// A budget below it: released, and the base is what is left.
	w.budget = 512 << 10
	got := w.check(ix, base)
	if w.releases.Load() != 1 {
		t.Fatalf("over budget (%d KiB resident): %d releases", resident, w.releases.Load())
	}
	if after := mappedRSS(t, path); after > resident/4 {
		t.Errorf("after the release %d KiB resident (was %d)", after, resident)
	}
	// What lookups read on their way to a leaf stays mapped.
	if len(ix.branches.runs) < 2 {
		t.Errorf("the release kept %d runs of pages: no branch pages", len(ix.branches.runs))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	present := presentPages(t, ix.db.Info().Data, int(fi.Size())/os.Getpagesize())
	for _, r := range ix.branches.runs {
		for id := r.first; id < r.first+r.n; id++ {
			if !present[id] {
				t.Fatalf("page %d of the kept runs %v is not mapped after the release", id, r)
			}
		}
	}
	if now, _ := residentFileBytes(); got > now+1<<20 {
		t.Errorf("new base %d, resident file-backed memory %d", got, now)
	}
	// The records are all there, read through the released mapping.
	for i := range n {
		if rec, ok, err := ix.Tag("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i)); err != nil || !ok || rec.Digest != digest.FromString(strconv.Itoa(i)) {
			t.Fatalf("tag %d after the release: %+v %v %v", i, rec, ok, err)
		}
	}
}

// releaseAll drops the index's mapped pages now.
func (ix *Index) releaseAll(t *testing.T) {
	t.Helper()
	if err := ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseMapped(tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestStatmReadsAnew checks that the kept-open /proc/self/statm tells
// RssFile as it is now, not as it was at the first read: a file mapped
// and read in between shows.
func TestStatmReadsAnew(t *testing.T) {
	s := openStatm()
	if s == nil {
		t.Skip("no /proc/self/statm")
	}
	defer s.close()
	before, ok := s.rssFile()
	if !ok {
		t.Fatal("no RssFile in /proc/self/statm")
	}
	const size = 8 << 20
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(data)
	sum := 0
	for i := 0; i < size; i += os.Getpagesize() {
		sum += int(data[i])
	}
	after, ok := s.rssFile()
	if !ok || after-before < size/2 {
		t.Fatalf("RssFile %d -> %d (ok %v) after mapping %d bytes (sum %d)", before, after, ok, size, sum)
	}
	if fresh, _ := residentFileBytes(); fresh-after > size/4 || after-fresh > size/4 {
		t.Errorf("kept open: %d, opened anew: %d", after, fresh)
	}
}

// BenchmarkStatm compares a look at RssFile through the kept-open file
// with one that opens it anew.
func BenchmarkStatm(b *testing.B) {
	b.Run("kept", func(b *testing.B) {
		s := openStatm()
		if s == nil {
			b.Skip("no /proc/self/statm")
		}
		defer s.close()
		for b.Loop() {
			if _, ok := s.rssFile(); !ok {
				b.Fatal("no RssFile")
			}
		}
	})
	b.Run("anew", func(b *testing.B) {
		for b.Loop() {
			if _, ok := residentFileBytes(); !ok {
				b.Fatal("no RssFile")
			}
		}
	})
}
