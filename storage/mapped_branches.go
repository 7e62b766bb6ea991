package storage

import (
	"encoding/binary"
	"io"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// A lookup reads one page per level of its bucket's B+tree: the branch
// pages on the way, then a leaf. At 100k images the hot buckets are 4–5
// levels deep, and once the watcher has dropped the mapping every level
// faults again (~2 faults per lookup, ~4–5 µs each). Their branch pages
// are few (~3% of the index), so the watcher keeps them mapped and drops
// only the rest: a lookup then faults its leaf alone.
//
// The branch pages are found by reading bbolt's page layout (stable since
// boltdb: a 16-byte header of id, flags, count and overflow; branch
// elements of pos, ksize, pgid), never below the leaves' parents, so that
// finding them reads no leaf. A page the last walk kept mapped (and no
// release has dropped since) is read through the mapping, for free; any
// other from the file (pread), never through the mapping: a fault there
// maps the page cache's whole large folio around the page (~128 KiB), so
// walking a 100k-image index through the mapping mapped up to ~460 MiB
// for a moment. The pages found are then mapped a batch at a time, each
// batch's neighbours dropped before the next (populate). Reads happen
// inside the read transaction, whose snapshot's pages bbolt does not
// reuse meanwhile. A misread only keeps or drops the wrong pages:
// dropping a read-only shared mapping's pages is always safe.
const (
	pageHeaderSize    = 16
	branchElementSize = 16
	branchPageFlag    = 0x01
	leafPageFlag      = 0x02
)

// pageRun is a run of index pages: [first, first+n).
type pageRun struct{ first, n uint64 }

// branchCache is the branch runs of the snapshot of transaction txid:
// walking them costs a few ms at 100k images, and between two releases
// nothing may have been written. mapped says every page of runs has been
// mapped since the last release that dropped the whole mapping: the next
// walk reads those through the mapping. mu serialises the watcher and
// the full reads' releases.
type branchCache struct {
	mu     sync.Mutex
	txid   int
	runs   []pageRun
	base   uintptr // the mapping's address when they were mapped
	mapped bool
	// fileReads and mappedReads count the pages the walks read from the
	// file and through the mapping (tests); touched sums the bytes
	// populate read.
	fileReads, mappedReads, touched int
}

// contains reports whether pages [id, id+n) all lie in one of runs
// (sorted, merged).
func contains(runs []pageRun, id, n uint64) bool {
	i, _ := slices.BinarySearchFunc(runs, id, func(r pageRun, id uint64) int {
		switch {
		case r.first+r.n <= id:
			return -1
		case r.first > id:
			return 1
		}
		return 0
	})
	return i < len(runs) && runs[i].first <= id && id+n <= runs[i].first+runs[i].n
}

// hotBuckets are the buckets whose branch pages the watcher keeps: those
// a request's lookups read (a manifest by tag: tags, manifests, mirrors;
// by digest and a blob hit: links). ~21 MiB at 100k images.
var hotBuckets = [][]byte{bucketTags, bucketManifests, bucketLinks, bucketMirrors}

// branchRuns returns the pages of tx's snapshot that lookups in buckets
// read on the way to their leaves, sorted and merged: the meta pages, the
// root bucket's tree (the buckets' headers), and the buckets' branch
// pages. w has the mapping, the file, the page size and the runs known to
// be mapped (branchWalk).
func branchRuns(tx *bolt.Tx, w *branchWalk, buckets [][]byte) []pageRun {
	w.data = w.data[:min(int64(len(w.data)), tx.Size())]
	w.runs = append(w.runs, pageRun{0, 2}) // the meta pages
	// The root bucket's tree is small: all of it, leaves too.
	w.walk(uint64(tx.Cursor().Bucket().Root()), -1)
	for _, name := range buckets {
		// 0: an inline bucket, in the root's leaf.
		if b := tx.Bucket(name); b != nil && b.Root() != 0 {
			root := uint64(b.Root())
			w.walk(root, w.depth(root))
		}
	}
	slices.SortFunc(w.runs, func(a, b pageRun) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	merged := w.runs[:0]
	for _, r := range w.runs {
		if last := len(merged) - 1; last >= 0 && r.first <= merged[last].first+merged[last].n {
			merged[last].n = max(merged[last].n, r.first+r.n-merged[last].first)
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// branchWalk collects the runs of a tree's branch pages.
type branchWalk struct {
	// data is the mapping (read only where known says it is mapped),
	// file the index's file, opened on the first read of a page known
	// does not name.
	data     []byte
	file     func() io.ReaderAt
	known    []pageRun
	pageSize uint64
	runs     []pageRun
	// fileReads and mappedReads count the pages read each way.
	fileReads, mappedReads int
	// bufs holds a page read from the file per level of the walk (a
	// parent's page stays in use while its children are read).
	bufs  [][]byte
	level int
}

// page returns page id with its overflow, or nil if it lies outside the
// snapshot or cannot be read (a misread). A page read from the file is
// in the walk's buffer for its level, valid until the next read there.
func (w *branchWalk) page(id uint64) []byte {
	off := id * w.pageSize
	size := uint64(len(w.data))
	if id == 0 || off/w.pageSize != id || off+w.pageSize > size {
		return nil
	}
	if contains(w.known, id, 1) {
		end := off + (uint64(binary.LittleEndian.Uint32(w.data[off+12:]))+1)*w.pageSize
		if end > size || end < off {
			return nil
		}
		if contains(w.known, id, (end-off)/w.pageSize) {
			w.mappedReads++
			return w.data[off:end]
		}
	}
	f := w.file()
	if f == nil {
		return nil
	}
	for len(w.bufs) <= w.level {
		w.bufs = append(w.bufs, nil)
	}
	buf := slices.Grow(w.bufs[w.level][:0], int(w.pageSize))[:w.pageSize]
	if _, err := f.ReadAt(buf, int64(off)); err != nil {
		return nil
	}
	end := off + (uint64(binary.LittleEndian.Uint32(buf[12:]))+1)*w.pageSize
	if end > size || end < off {
		return nil
	}
	if n := end - off; n > w.pageSize {
		buf = slices.Grow(buf, int(n))[:n]
		if _, err := f.ReadAt(buf, int64(off)); err != nil {
			return nil
		}
	}
	w.bufs[w.level] = buf
	w.fileReads++
	return buf
}

// depth returns the levels of branch pages above the leaves of the tree
// at root, following its first children (one leaf read per bucket).
func (w *branchWalk) depth(root uint64) int {
	d := 0
	for id := root; d < 64; d++ {
		p := w.page(id)
		if p == nil || binary.LittleEndian.Uint16(p[8:])&branchPageFlag == 0 ||
			binary.LittleEndian.Uint16(p[10:]) == 0 {
			return d
		}
		id = binary.LittleEndian.Uint64(p[pageHeaderSize+8:])
	}
	return d
}

// walk adds page id and, if it is a branch page, the branch pages below
// it down to levels levels (negative: every page, leaves too). The
// children of the last level are not read: they are leaves.
func (w *branchWalk) walk(id uint64, levels int) {
	if levels == 0 {
		return
	}
	p := w.page(id)
	if p == nil {
		return
	}
	flags, count := binary.LittleEndian.Uint16(p[8:]), int(binary.LittleEndian.Uint16(p[10:]))
	if flags&branchPageFlag == 0 {
		if levels < 0 && flags&leafPageFlag != 0 {
			w.runs = append(w.runs, pageRun{id, uint64(len(p)) / w.pageSize})
		}
		return
	}
	w.runs = append(w.runs, pageRun{id, uint64(len(p)) / w.pageSize})
	if pageHeaderSize+count*branchElementSize > len(p) {
		return
	}
	w.level++
	defer func() { w.level-- }()
	for i := range count {
		e := p[pageHeaderSize+i*branchElementSize:]
		w.walk(binary.LittleEndian.Uint64(e[8:]), levels-1)
	}
}
