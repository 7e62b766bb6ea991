package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// mapping returns the start and end of the index's mapping of its file.
func mapping(t *testing.T, ix *Index) (uintptr, uintptr) {
	t.Helper()
	start := ix.db.Info().Data
	end, ok := mappingEnd(start)
	if !ok {
		t.Skip("no /proc/self/maps")
	}
	return start, end
}

// The index maps room to grow at open (twice the file, at least 1 GiB):
// writes that grow the file do not remap it (a remap waits for every read
// transaction, holding the write lock), and an index reopened maps twice
// its size again.
func TestIndexMapsRoomToGrow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix, err := OpenIndex(path)
	if err != nil {
		t.Fatal(err)
	}
	start, end := mapping(t, ix)
	if end-start < minMapped {
		t.Fatalf("mapped %d bytes of a new index, want at least %d", end-start, minMapped)
	}
	before := ix.fileSize()
	body := bytes.Repeat([]byte("x"), 256<<10)
	for i := range 128 {
		if err := ix.PutManifestBody(digest.FromString(fmt.Sprint(i)), body); err != nil {
			t.Fatal(err)
		}
	}
	grown := ix.fileSize()
	if grown < before+16<<20 {
		t.Fatalf("the file grew from %d to %d bytes only", before, grown)
	}
	if s, e := mapping(t, ix); s != start || e != end {
		t.Fatalf("the file grew from %d to %d bytes and was remapped: %#x-%#x, then %#x-%#x", before, grown, start, end, s, e)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened as if it were large: twice its size.
	o := openOptions(path)
	if o.InitialMmapSize != int(max(2*grown, minMapped)) {
		t.Fatalf("options for a %d-byte index: %+v", grown, o)
	}
}

// TestWriteTotalsCountTheLocksUsage checks WriteTotals' CPU and Faults: a
// write transaction that faults in 8 MiB of fresh memory (2,048 pages,
// huge pages refused) under the lock counts at least those faults, and
// some CPU; a read outside any write counts nothing.
func TestWriteTotalsCountTheLocksUsage(t *testing.T) {
	ix := openTestIndex(t)
	const size = 8 << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Munmap(mem)
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	before := ix.WriteTotals()
	if err := ix.db.View(func(*bolt.Tx) error { mem[0] = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	if got := ix.WriteTotals(); got != before {
		t.Fatalf("a read changed the write totals: %+v, then %+v", before, got)
	}
	if err := ix.write(func(*bolt.Tx) error {
		for i := 0; i < size; i += os.Getpagesize() {
			mem[i] = 1
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after := ix.WriteTotals()
	if n := after.Faults - before.Faults; n < size/int64(os.Getpagesize())-1 {
		t.Errorf("Faults grew %d in a write that faulted in %d pages", n, size/os.Getpagesize()-1)
	}
	if after.CPU <= before.CPU {
		t.Errorf("CPU did not grow (%v) in a write that faulted in %d MiB", after.CPU-before.CPU, size>>20)
	}
}
