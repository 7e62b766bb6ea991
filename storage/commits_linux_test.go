package storage

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
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
