package storage

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

// A request's lookup (a tag, a manifest record, a fill record, a link)
// reads its bucket's branch pages, which the watcher keeps mapped, and
// one leaf. At 100k images the leaf is almost never mapped (the watcher
// drops the leaves whenever RssFile grew 16 MiB), so bbolt's Get faults
// it in: ~4–5 µs, and the fault maps the page cache's whole large folio
// around it (~94 KiB of RssFile per lookup measured at 100k). leafReader
// reads the leaf with pread instead (a lookup took the same time either
// way, 14–16 µs, but maps nothing): the branch pages it knows are mapped
// through the mapping, any other page from the file, each page
// interpreted by its own header (bbolt's layout: mapped_branches.go), as
// bbolt's Bucket.Get searches it. Anything it
// does not expect (an inline bucket, a page whose header does not name
// it, a short read) falls back to bbolt's Get. A small index (under
// leafReadMin) stays mapped whole: bbolt's Get reads it for free.
const leafReadMin = 64 << 20

// leafElementSize is the size of a leaf page's element (flags, pos,
// ksize, vsize, each 4 bytes).
const leafElementSize = 16

// mappedRuns is the branch pages known to be mapped in the mapping at
// base (published by the watcher's release), as runs and as a bitmap of
// page ids: a lookup asks once or twice per level, and the runs' binary
// search (~3,000 runs at 100k images) cost ~6% of a lookup.
type mappedRuns struct {
	base uintptr
	runs []pageRun
	bits []uint64
}

// newMappedRuns returns runs at base with their bitmap.
func newMappedRuns(base uintptr, runs []pageRun) *mappedRuns {
	m := &mappedRuns{base: base, runs: runs}
	if len(runs) > 0 {
		last := runs[len(runs)-1]
		m.bits = make([]uint64, (last.first+last.n+63)/64)
		for _, r := range runs {
			for id := r.first; id < r.first+r.n; id++ {
				m.bits[id/64] |= 1 << (id % 64)
			}
		}
	}
	return m
}

// has reports whether pages [id, id+n) are all mapped (m may be nil).
func (m *mappedRuns) has(id, n uint64) bool {
	if m == nil {
		return false
	}
	for p := id; p < id+n; p++ {
		if p/64 >= uint64(len(m.bits)) || m.bits[p/64]&(1<<(p%64)) == 0 {
			return false
		}
	}
	return true
}

// bucketRoots is the root pages of the buckets lookups read, in the
// snapshot of transaction txid: a root changes only with a write, and
// opening the bucket (tx.Bucket: a search of the root bucket and an
// allocation) cost ~6% of a lookup. 0: an inline bucket.
type bucketRoots struct {
	txid  int
	names []string
	ids   []uint64
}

// leafReader reads records' leaves from the index file (see above).
type leafReader struct {
	f *os.File
	// min is leafReadMin (tests set less).
	min int64
	// known is the watcher's branch pages, nil when none are known to be
	// mapped.
	known atomic.Pointer[mappedRuns]
	// roots is the buckets' roots in the last snapshot looked up.
	roots atomic.Pointer[bucketRoots]
	// hot is the leaves last read of hotBucketsKept (hotleaves.go).
	hot  []*hotLeaves
	bufs sync.Pool
	// fileReads counts the pages read from the file (tests).
	fileReads atomic.Int64
}

// get returns the value of key in bucket as tx sees it, as
// tx.Bucket(bucket).Get(key) would; ok false means it could not tell
// (then ask bbolt). The value lies in a pooled buffer or the mapping:
// valid until done is called and the transaction ends.
func (r *leafReader) get(tx *bolt.Tx, bucket, key []byte) (v []byte, ok bool, done func()) {
	noop := func() {}
	if r == nil || tx.Size() < r.min {
		return nil, false, noop
	}
	if tx.Writable() {
		return nil, false, noop
	}
	root, ok := r.root(tx, bucket)
	if !ok || root == 0 {
		return nil, false, noop
	}
	db := tx.DB()
	info := db.Info()
	ps := uint64(info.PageSize)
	size := uint64(tx.Size())
	known := r.known.Load()
	if known != nil && known.base != info.Data {
		known = nil
	}
	bp, _ := r.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	done = func() { r.bufs.Put(bp) }
	hot := r.hotLeavesOf(bucket)
	id := root
	for range 64 {
		off := id * ps
		if id < 2 || off/ps != id || off+ps > size {
			return nil, false, done
		}
		var p []byte
		if known.has(id, 1) {
			// Mapped: read in place (no fault), within the snapshot.
			start := info.Data + uintptr(off)
			hdr := unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&start))), pageHeaderSize)
			n := (uint64(binary.LittleEndian.Uint32(hdr[12:])) + 1) * ps
			if off+n > size || !known.has(id, n/ps) {
				return nil, false, done
			}
			p = unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&start))), n)
		} else if leaf, kept := hot.get(tx.ID(), id, (*bp)[:0]); kept {
			*bp = leaf
			p = leaf // a leaf kept in memory (hotleaves.go)
		} else {
			buf := slices.Grow((*bp)[:0], int(ps))[:ps]
			if _, err := r.f.ReadAt(buf, int64(off)); err != nil {
				return nil, false, done
			}
			if n := (uint64(binary.LittleEndian.Uint32(buf[12:])) + 1) * ps; n > ps {
				if off+n > size {
					return nil, false, done
				}
				buf = slices.Grow(buf, int(n-ps))[:n]
				if _, err := r.f.ReadAt(buf[ps:], int64(off+ps)); err != nil {
					return nil, false, done
				}
			}
			*bp = buf
			r.fileReads.Add(1)
			p = buf
			if len(buf) == int(ps) {
				hot.keep(tx.ID(), id, buf)
			}
		}
		if binary.LittleEndian.Uint64(p) != id {
			return nil, false, done // not the page it should be
		}
		flags, count := binary.LittleEndian.Uint16(p[8:]), int(binary.LittleEndian.Uint16(p[10:]))
		switch {
		case flags&branchPageFlag != 0:
			if count == 0 || pageHeaderSize+count*branchElementSize > len(p) {
				return nil, false, done
			}
			bad := false
			elemKey := func(i int) []byte {
				e := pageHeaderSize + i*branchElementSize
				pos, ks := int(binary.LittleEndian.Uint32(p[e:])), int(binary.LittleEndian.Uint32(p[e+4:]))
				if e+pos+ks > len(p) {
					bad = true
					return nil
				}
				return p[e+pos : e+pos+ks]
			}
			// bbolt's Cursor.searchBranch: the last key <= key.
			exact := false
			i := sort.Search(count, func(i int) bool {
				c := bytes.Compare(elemKey(i), key)
				if c == 0 {
					exact = true
				}
				return c != -1
			})
			if !exact && i > 0 {
				i--
			}
			if bad || i >= count {
				return nil, false, done
			}
			id = binary.LittleEndian.Uint64(p[pageHeaderSize+i*branchElementSize+8:])
		case flags&leafPageFlag != 0:
			if pageHeaderSize+count*leafElementSize > len(p) {
				return nil, false, done
			}
			bad := false
			elem := func(i int) (k, v []byte, flags uint32) {
				e := pageHeaderSize + i*leafElementSize
				flags = binary.LittleEndian.Uint32(p[e:])
				pos, ks, vs := int(binary.LittleEndian.Uint32(p[e+4:])), int(binary.LittleEndian.Uint32(p[e+8:])), int(binary.LittleEndian.Uint32(p[e+12:]))
				if e+pos+ks+vs > len(p) {
					bad = true
					return nil, nil, 0
				}
				return p[e+pos : e+pos+ks], p[e+pos+ks : e+pos+ks+vs], flags
			}
			i := sort.Search(count, func(i int) bool {
				k, _, _ := elem(i)
				return bytes.Compare(k, key) != -1
			})
			if bad {
				return nil, false, done
			}
			if i == count {
				return nil, true, done
			}
			k, v, f := elem(i)
			// bbolt's Get: a nested bucket's key, or another key, is no value.
			if bad || f&bucketLeafFlag != 0 || !bytes.Equal(k, key) {
				return nil, !bad, done
			}
			return v, true, done
		default:
			return nil, false, done
		}
	}
	return nil, false, done
}

// bucketLeafFlag marks a leaf element that is a nested bucket.
const bucketLeafFlag = 0x01

// publish tells r the branch pages now mapped in the mapping at base
// (nil: none known).
func (r *leafReader) publish(base uintptr, runs []pageRun) {
	if r == nil {
		return
	}
	if runs == nil {
		r.known.Store(nil)
		return
	}
	r.known.Store(newMappedRuns(base, runs))
}

// root returns bucket's root page in tx's snapshot (0: inline), ok false
// if there is no such bucket.
func (r *leafReader) root(tx *bolt.Tx, bucket []byte) (uint64, bool) {
	cur := r.roots.Load()
	if cur != nil && cur.txid == tx.ID() {
		for i, name := range cur.names {
			if name == string(bucket) {
				return cur.ids[i], true
			}
		}
	}
	b := tx.Bucket(bucket)
	if b == nil {
		return 0, false
	}
	next := &bucketRoots{txid: tx.ID()}
	if cur != nil && cur.txid == tx.ID() {
		next.names, next.ids = slices.Clone(cur.names), slices.Clone(cur.ids)
	}
	next.names, next.ids = append(next.names, string(bucket)), append(next.ids, uint64(b.Root()))
	r.roots.Store(next)
	return uint64(b.Root()), true
}

// close closes r's file; a nil r does nothing.
func (r *leafReader) close() error {
	if r == nil {
		return nil
	}
	for _, h := range r.hot {
		h.free()
	}
	return r.f.Close()
}

// readLeaves returns a leafReader of the index file at path, nil where
// no watcher runs (s does not tell RssFile: nothing drops the leaves, and
// bbolt reads them mapped) or the file cannot be opened.
func readLeaves(path string, s *statm) *leafReader {
	if _, ok := s.rssFile(); !ok {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	return &leafReader{f: f, min: leafReadMin, hot: newHotLeaves(hotBucketsKept)}
}

// lookup returns key's value in bucket (tx.Bucket(bucket).Get(key)),
// its leaf read from the file where the index is large (leafReader).
// The value is valid until done is called and the transaction ends.
func (ix *Index) lookup(tx *bolt.Tx, bucket, key []byte) (v []byte, done func()) {
	v, ok, done := ix.leaves.get(tx, bucket, key)
	if !ok {
		v = tx.Bucket(bucket).Get(key)
	}
	return v, done
}
