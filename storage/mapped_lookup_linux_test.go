package storage

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// TestLookupReadsLeavesFromFile checks the requests' lookups on a large
// index: every key present, absent (before, between and after the keys)
// and with an empty value reads as bbolt's Get reads it, and once the
// watcher has dropped the leaves, the lookups map none of them again
// (bbolt's Get faults each one in, with the folio around it).
func TestLookupReadsLeavesFromFile(t *testing.T) {
	const n = 60_000
	ix, _ := filledIndex(t, n)
	ix.mapped.stop()
	if ix.leaves == nil {
		t.Fatal("no leaf reader on Linux")
	}
	ix.leaves.min = 0 // as if large
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		for i := range 2_000 {
			if err := link(tx, "docker.io", "library/r", digest.FromString(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for i := 0; i < n; i += 7 {
		keys = append(keys, tagKey("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i)),
			tagKey("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d~", i))) // absent, between
	}
	keys = append(keys, []byte(""), []byte("a"), []byte("zzzz"), []byte("docker.io/"))
	var links [][]byte
	for i := range 2_100 { // the last 100 absent
		links = append(links, linkKey("docker.io", "library/r", digest.FromString(strconv.Itoa(i))))
	}
	check := func() {
		t.Helper()
		if err := ix.db.View(func(tx *bolt.Tx) error {
			for _, c := range []struct {
				bucket []byte
				keys   [][]byte
			}{{bucketTags, keys}, {bucketLinks, links}} {
				for _, k := range c.keys {
					want := tx.Bucket(c.bucket).Get(k)
					got, ok, done := ix.leaves.get(tx, c.bucket, k)
					if !ok || (got == nil) != (want == nil) || !bytes.Equal(got, want) {
						t.Fatalf("%s %q: got %q (%v), bbolt %q", c.bucket, k, got, ok, want)
					}
					done()
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	check()
	// The watcher's release: branch pages mapped, leaves dropped.
	if err := ix.db.View(func(tx *bolt.Tx) error {
		ix.releaseLeaves(tx, &ix.branches)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var before []bool
	if err := ix.db.View(func(tx *bolt.Tx) error {
		before = presentPages(t, ix.db.Info().Data, int(tx.Size())/os.Getpagesize())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	reads, hits := ix.leaves.fileReads.Load(), hotHits(ix)
	for i := 0; i < n; i += 7 {
		rec, ok, err := ix.Tag("docker.io", fmt.Sprintf("library/r%d", i/100), fmt.Sprintf("v%d", i))
		if err != nil || !ok || rec.Digest != digest.FromString(strconv.Itoa(i)) {
			t.Fatalf("tag %d: %+v %v %v", i, rec, ok, err)
		}
	}
	for i := range 2_100 {
		if ok, err := ix.Linked("docker.io", "library/r", digest.FromString(strconv.Itoa(i))); err != nil || ok != (i < 2_000) {
			t.Fatalf("link %d: %v %v", i, ok, err)
		}
	}
	// Each lookup read its leaf from the file, or from the leaves kept
	// once read twice (hotLeaves: several tags share a leaf).
	hits = hotHits(ix) - hits
	if got := ix.leaves.fileReads.Load() - reads + hits; got < n/7+2_100 {
		t.Errorf("%d pages read from the file and %d lookups answered by the kept leaves for %d lookups", ix.leaves.fileReads.Load()-reads, hits, n/7+2_100)
	}
	if err := ix.db.View(func(tx *bolt.Tx) error {
		added := 0
		for id, p := range presentPages(t, ix.db.Info().Data, len(before)) {
			if p && !before[id] {
				added++
			}
		}
		if added > 0 {
			t.Errorf("%d lookups mapped %d pages", n/7+2_100, added)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check()
}

// hotHits is the lookups answered by ix's kept leaves so far.
func hotHits(ix *Index) int64 {
	var n int64
	for _, h := range ix.leaves.hot {
		h.mu.Lock()
		n += h.hits
		h.mu.Unlock()
	}
	return n
}
