package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// TestHotLeavesServeRepeatedLookups checks that on a large index a tag's
// leaf read twice in a snapshot is kept, so that a third lookup reads no
// page from the file and reads as bbolt's Get reads; that a write (a new
// snapshot) sends the lookups back to the file; and that the lookups of
// another bucket keep nothing.
func TestHotLeavesServeRepeatedLookups(t *testing.T) {
	const n = 60_000
	ix, _ := filledIndex(t, n)
	ix.mapped.stop()
	r := ix.leaves
	if r == nil {
		t.Fatal("no leaf reader on Linux")
	}
	r.min = 0 // as if large
	writeLinks := func(from int) {
		t.Helper()
		if err := ix.db.Update(func(tx *bolt.Tx) error {
			for i := from; i < from+2_000; i++ {
				if err := link(tx, "docker.io", "library/r", digest.FromString(strconv.Itoa(i))); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	writeLinks(0)
	// The watcher's release: branch pages mapped, leaves read from the file.
	if err := ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseLeaves(tx, &ix.branches)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var tags, between [][]byte // each on a leaf of its own; absent keys on the same leaves
	for i := 0; i < n; i += 997 {
		tags = append(tags, tagKey("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i)))
		between = append(between, tagKey("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d~", i)))
	}
	var links [][]byte
	for i := range 40 {
		links = append(links, linkKey("docker.io", "library/r", digest.FromString(strconv.Itoa(i*50))))
	}
	// lookups checks every key against bbolt and returns the pages read
	// from the file.
	lookups := func(bucket []byte, keys [][]byte) int64 {
		t.Helper()
		before := r.fileReads.Load()
		if err := ix.db.View(func(tx *bolt.Tx) error {
			for _, k := range keys {
				want := tx.Bucket(bucket).Get(k)
				got, ok, done := r.get(tx, bucket, k)
				if !ok || (got == nil) != (want == nil) || !bytes.Equal(got, want) {
					t.Fatalf("%s %q: got %q (%v), bbolt %q", bucket, k, got, ok, want)
				}
				done()
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return r.fileReads.Load() - before
	}
	if got := lookups(bucketTags, tags); got != int64(len(tags)) {
		t.Fatalf("first lookups read %d pages from the file, want %d (the leaves)", got, len(tags))
	}
	if got := lookups(bucketTags, tags); got != int64(len(tags)) {
		t.Fatalf("second lookups read %d pages from the file, want %d (a leaf is kept on its second read)", got, len(tags))
	}
	hits := r.hotLeavesOf(bucketTags).hits
	if got := lookups(bucketTags, append(tags, between...)); got != 0 {
		t.Fatalf("third lookups read %d pages from the file, want 0 (kept)", got)
	}
	if got := r.hotLeavesOf(bucketTags).hits - hits; got != int64(len(tags)+len(between)) {
		t.Fatalf("%d lookups answered from the kept leaves, want %d", got, len(tags)+len(between))
	}
	for range 3 {
		if got := lookups(bucketLinks, links); got != int64(len(links)) {
			t.Fatalf("links' lookups read %d pages from the file, want %d (not kept)", got, len(links))
		}
	}
	// A write: another snapshot, whose pages may be other pages.
	writeLinks(2_000)
	if got := lookups(bucketTags, tags); got != int64(len(tags)) {
		t.Fatalf("after a write the lookups read %d pages from the file, want %d", got, len(tags))
	}
	// A tag rewritten, read three times in the new snapshot: its new value.
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTags).Put(tags[0], []byte(`{"digest":"sha256:moved"}`))
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		lookups(bucketTags, append(tags, between...))
	}
}

// TestHotLeavesKeepOneSnapshot checks the cache's rules: a leaf is kept
// on its second read, served only in the snapshot it was read in (in
// another, its page id may name another page), a newer snapshot empties
// the cache, an older one keeps nothing, a page that is not a leaf is not
// kept, and no more leaves are kept than the memory allows.
func TestHotLeavesKeepOneSnapshot(t *testing.T) {
	const ps = 4096
	page := func(id uint64, flags uint16, fill byte) []byte {
		p := bytes.Repeat([]byte{fill}, ps)
		binary.LittleEndian.PutUint64(p, id)
		binary.LittleEndian.PutUint16(p[8:], flags)
		return p
	}
	h := newHotLeaves([][]byte{bucketTags})[0]
	defer h.free()
	get := func(txid int, id uint64) (byte, bool) {
		p, ok := h.get(txid, id, nil)
		if !ok {
			return 0, false
		}
		return p[ps-1], true
	}
	h.keep(5, 10, page(10, leafPageFlag, 'a'))
	if _, ok := get(5, 10); ok {
		t.Fatal("a leaf read once is kept")
	}
	h.keep(5, 10, page(10, leafPageFlag, 'a'))
	if b, ok := get(5, 10); !ok || b != 'a' {
		t.Fatalf("a leaf read twice: %q %v", b, ok)
	}
	if _, ok := get(6, 10); ok {
		t.Fatal("a leaf kept in snapshot 5 served in snapshot 6")
	}
	h.keep(6, 10, page(10, leafPageFlag, 'b'))
	h.keep(6, 10, page(10, leafPageFlag, 'b'))
	if b, ok := get(6, 10); !ok || b != 'b' {
		t.Fatalf("snapshot 6's leaf: %q %v", b, ok)
	}
	h.keep(5, 11, page(11, leafPageFlag, 'c'))
	h.keep(5, 11, page(11, leafPageFlag, 'c'))
	if _, ok := get(5, 11); ok {
		t.Fatal("an older snapshot's leaf kept")
	}
	h.keep(6, 12, page(12, branchPageFlag, 'd'))
	h.keep(6, 12, page(12, branchPageFlag, 'd'))
	if _, ok := get(6, 12); ok {
		t.Fatal("a branch page kept")
	}
	const slots = hotLeavesBytes / ps
	for id := uint64(100); id < 100+3*slots; id++ {
		h.keep(6, id, page(id, leafPageFlag, byte(id)))
		h.keep(6, id, page(id, leafPageFlag, byte(id)))
	}
	kept := 0
	for id := uint64(100); id < 100+3*slots; id++ {
		if b, ok := get(6, id); ok {
			if b != byte(id) {
				t.Fatalf("leaf %d: %q", id, b)
			}
			kept++
		}
	}
	if kept == 0 || kept > slots {
		t.Fatalf("%d leaves kept, want 1–%d", kept, slots)
	}
}
