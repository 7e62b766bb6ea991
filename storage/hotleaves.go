package storage

import (
	"bytes"
	"encoding/binary"
	"sync"
)

// A tag's lookup on a large index reads its leaf with pread (see
// leafReader): ~3 µs warm, 5–6 µs in a request, whose other work leaves
// the kernel's page-cache structures and the page cold, against ~1.5 µs
// for a page bbolt reads in place on a small index. A real mirror's pulls
// are skewed (the latest tags of popular images), so the leaves those
// tags lie on are read again and again: hotLeaves keeps the last ones
// read, per bucket, in memory of its own (hotLeavesBytes; CLOCK
// eviction), so that a repeated lookup copies its leaf from there with no
// system call. A uniform draw over a million tags (BenchmarkScaleLatency)
// hits it in proportion to its size only: ~0.8% at 100k images.
//
// A leaf is kept for one snapshot of the index, named by its transaction
// id: bbolt frees a page only once no reader of a snapshot holding it is
// left, and may reuse it then, so a page id names other contents in
// another snapshot (and a bucket's root page id may come back after a
// few writes, naming another tree). A lookup uses the kept leaves only in
// the snapshot they were read in; the first lookup in a newer one empties
// the cache. Any write makes a new snapshot: the last pulls flushed
// every 30 s, a fill recorded, a tag revalidated. Hot leaves are read
// again within a few requests.
var hotBucketsKept = [][]byte{bucketTags}

// hotLeavesBytes is the memory kept for leaves per bucket: ~1,000 leaves
// of 4 KiB, each holding ~8–16 tags.
const hotLeavesBytes = 4 << 20

// hotLeavesSeen is how many leaves read once a cache remembers (by id,
// 32 KiB).
const hotLeavesSeen = 4096

// hotLeaves is the leaves of one bucket's tree last read (see above).
type hotLeaves struct {
	bucket []byte
	mu     sync.Mutex
	// txid is the snapshot the leaves were read in; ps the page size.
	txid int
	ps   int
	// seen is the leaves read once, by id modulo its length: a leaf is
	// kept on its second read in a snapshot, so that a draw that rarely
	// repeats (a scan, a uniform draw) pays no copy per lookup.
	seen []uint64
	// mem is slots of ps bytes; ids the page in each (0: none); slot
	// the slot of each page; ref CLOCK's bits, hand its position.
	mem  []byte
	ids  []uint64
	slot map[uint64]int
	ref  []bool
	hand int
	// hits counts the lookups answered from here (tests).
	hits int64
}

// newHotLeaves returns an empty cache for each of buckets.
func newHotLeaves(buckets [][]byte) []*hotLeaves {
	hs := make([]*hotLeaves, len(buckets))
	for i, b := range buckets {
		hs[i] = &hotLeaves{bucket: b}
	}
	return hs
}

// hotLeavesOf returns bucket's cache, nil if its leaves are not kept.
func (r *leafReader) hotLeavesOf(bucket []byte) *hotLeaves {
	for _, h := range r.hot {
		if bytes.Equal(h.bucket, bucket) {
			return h
		}
	}
	return nil
}

// get copies leaf id of snapshot txid into buf (grown to the page size)
// and returns it; ok false if it is not kept. h may be nil.
func (h *hotLeaves) get(txid int, id uint64, buf []byte) ([]byte, bool) {
	if h == nil {
		return nil, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	i, ok := h.slot[id]
	if !ok || h.txid != txid {
		return nil, false
	}
	h.ref[i] = true
	h.hits++
	buf = append(buf[:0], h.mem[i*h.ps:(i+1)*h.ps]...)
	return buf, true
}

// keep keeps page, leaf id as snapshot txid reads it; a page that is not
// a leaf, or not of the first page's size, is not kept. A newer snapshot
// than the last empties the cache first; an older one keeps nothing. h
// may be nil.
func (h *hotLeaves) keep(txid int, id uint64, page []byte) {
	if h == nil || len(page) < pageHeaderSize || binary.LittleEndian.Uint16(page[8:])&leafPageFlag == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ps == 0 {
		h.ps = len(page)
	}
	if len(page) != h.ps {
		return
	}
	if txid != h.txid {
		if txid < h.txid {
			return
		}
		h.txid = txid
		clear(h.seen)
		clear(h.slot)
		clear(h.ids)
		clear(h.ref)
	}
	if _, ok := h.slot[id]; ok {
		return
	}
	if h.seen == nil {
		h.seen = make([]uint64, hotLeavesSeen)
	}
	if s := &h.seen[id%uint64(len(h.seen))]; *s != id {
		*s = id // read once: kept if read again
		return
	}
	if h.mem == nil {
		mem, err := reserveRegion(hotLeavesBytes)
		if err != nil {
			return
		}
		n := hotLeavesBytes / h.ps
		h.mem, h.ids, h.ref, h.slot = mem, make([]uint64, n), make([]bool, n), make(map[uint64]int, n)
	}
	// CLOCK: the first slot not referenced since the hand last passed.
	for h.ids[h.hand] != 0 && h.ref[h.hand] {
		h.ref[h.hand] = false
		h.hand = (h.hand + 1) % len(h.ids)
	}
	i := h.hand
	h.hand = (h.hand + 1) % len(h.ids)
	if old := h.ids[i]; old != 0 {
		delete(h.slot, old)
	}
	copy(h.mem[i*h.ps:], page)
	h.ids[i], h.slot[id], h.ref[i] = id, i, false
}

// free returns the cache's memory; h may be nil.
func (h *hotLeaves) free() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mem != nil {
		freeRegion(h.mem)
		h.mem, h.ids, h.ref, h.slot, h.seen = nil, nil, nil, nil, nil
	}
}
