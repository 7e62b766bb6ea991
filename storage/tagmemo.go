package storage

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"
)

// A manifest hit by tag reads the tag's record. At 100k images the tags
// bucket holds a million records, and the lookup reads its leaf from the
// file (mapped_lookup.go) after a deeper descent: ~5–7 µs more than at 1k
// images, which keeps that hit ~6–10% slower at 100k on a uniform draw
// (hot leaves, hotleaves.go, help a skewed one only). Index.tags
// remembers every tag's record as a hit reads it (TagHit): the manifest's
// digest, type and size, and when the upstream last confirmed it. The
// start's full read fills it (ScanAtStart), lookups since add to it.
//
// What it keeps, outside the Go heap (reserveRegion: the collector
// neither scans it nor grows its goal by it): per tag a 64-bit hash of
// its key under a random seed, its CheckedAt in seconds (floored: a tag
// looks at most a second older, and is revalidated that much sooner) and
// a manifest's number (16 bytes), per manifest named its sha256 digest,
// type and size (41 bytes), and a table of where each hash's top 16 bits
// start (256 KiB): ~20 MiB at 100k images (a million tags, 100k
// manifests), at most
// maxTagBase tags. A lookup hashes the key, reads its start, and searches
// the ~16 tags that follow: a few cache lines, at any size (~1 µs at
// 100k images in the server, against ~7 µs for the index's lookup).
//
// Like the fill memo it is kept true by its writers: every write of a tag
// record goes through tagWrites, which forgets its key once committed
// (tagwrites.go), and a lookup's record is kept only if no forget came
// between its read and its add (epoch). The start's read is long (~1 s at
// 100k images) and pulls write tags meanwhile: the keys forgotten during
// it are logged and forgotten in what it read before it is installed.
// Two tags whose keys share a hash are both left out of the start's read
// (found as it sorts); a tag looked up whose hash another one holds is
// answered with the other's record, a chance of about n/2⁶⁴ per lookup
// (n the tags held: ~5·10⁻¹⁴ at 100k images), the same bet the link memo
// makes. The manifest served is still read and checked against its
// digest. Records the memo cannot hold (a digest other than sha256, a
// media type without a number, a check before 1970 or after 2106) are
// looked up each time. Off on a shared index, whose
// records other replicas write.
type tagMemo struct {
	seed maphash.Seed
	// scan is held by a full read from beginScan to endScan: one at a
	// time, each with its own log.
	scan sync.Mutex

	mu  sync.Mutex
	off bool
	// released says the table is released (ReleaseTags) until
	// ResumeTags: a full read meanwhile stops, installing nothing. held
	// is how many tags the last table held (a read's first size).
	released bool
	held     int
	// epoch counts the forgets: a lookup's record is kept only if none
	// came between its read and its add.
	epoch uint64
	// scanning is set from a full read's beginScan to its endScan;
	// forgotten logs the hashes forgotten meanwhile (lost: more than
	// maxTagLog).
	scanning  bool
	forgotten []uint64
	lost      bool
	// base is what the last full read found; added the records read by
	// lookups since, at most maxTagAdded.
	base  *tagTable
	added map[uint64]tagEntry
	// hits counts the lookups answered here (tests).
	hits int64
}

const (
	// maxTagBase bounds the tags kept from a full read (32 MiB of them).
	maxTagBase = 2 << 20
	// maxTagAdded bounds the tags added by lookups after it (~72 bytes
	// each in a map).
	maxTagAdded = 16 << 10
	// maxTagLog bounds the forgets logged during a full read; beyond, it
	// is dropped.
	maxTagLog = 64 << 10
)

// Manifest numbers of a tag (tagSlot.manifest) that name no manifest.
const (
	// tagForgotten: written since the table was read; looked up.
	tagForgotten = ^uint32(0)
	// tagShared: its hash is another tag's too; looked up, never added.
	tagShared = ^uint32(0) - 1
)

// tagEntry is a record a lookup added.
type tagEntry struct {
	digest  [32]byte
	checked uint32
	size    int64
	typ     uint8
}

// newTagMemo returns an empty tag memo.
func newTagMemo() *tagMemo {
	return &tagMemo{seed: maphash.MakeSeed(), added: map[uint64]tagEntry{}}
}

// hash is key's hash.
func (m *tagMemo) hash(key []byte) uint64 { return maphash.Bytes(m.seed, key) }

// get returns key's record as a hit reads it (TagHit), if held.
func (m *tagMemo) get(key []byte) (TagRecord, bool) {
	h := m.hash(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.off {
		return TagRecord{}, false
	}
	if e, ok := m.added[h]; ok {
		m.hits++
		return tagRecordOf(&e.digest, e.checked, e.typ, e.size), true
	}
	t := m.base
	if t == nil {
		return TagRecord{}, false
	}
	i := t.find(h)
	if i < 0 || t.tags.s[i].manifest >= tagShared {
		return TagRecord{}, false
	}
	slot := t.tags.s[i]
	n := slot.manifest
	m.hits++
	return tagRecordOf(&t.digests.s[n], slot.checked, t.types.s[n], t.sizes.s[n]), true
}

// begin returns the epoch to give add for a read that begins now.
func (m *tagMemo) begin() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.epoch
}

// add keeps key's record rec, read by a lookup that began at epoch,
// unless a write forgot a key since, the memo is full, or it cannot hold
// rec.
func (m *tagMemo) add(epoch uint64, key []byte, rec TagRecord) {
	e, ok := tagEntryOf(rec.Digest, rec.CheckedAt, rec.Type, rec.Size)
	if !ok {
		return
	}
	m.addHash(epoch, m.hash(key), e)
}

// addHash is add of the key whose hash is h, its record as e.
func (m *tagMemo) addHash(epoch uint64, h uint64, e tagEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.off || m.epoch != epoch || len(m.added) >= maxTagAdded {
		return
	}
	if t := m.base; t != nil {
		if i := t.find(h); i >= 0 && t.tags.s[i].manifest == tagShared {
			return
		}
	}
	m.added[h] = e
}

// forget drops keys, whose records were written: call it once the write
// is committed.
func (m *tagMemo) forget(keys ...[]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.epoch++
	for _, k := range keys {
		h := m.hash(k)
		delete(m.added, h)
		if t := m.base; t != nil {
			if i := t.find(h); i >= 0 && t.tags.s[i].manifest != tagShared {
				t.tags.s[i].manifest = tagForgotten
			}
		}
		if m.scanning {
			if len(m.forgotten) < maxTagLog {
				m.forgotten = append(m.forgotten, h)
			} else {
				m.lost = true
			}
		}
	}
}

// beginScan starts logging the forgets, for a full read that begins now;
// it waits for any other to end. Call endScan after it, installed or not.
func (m *tagMemo) beginScan() {
	m.scan.Lock()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.scanning, m.forgotten, m.lost = true, nil, false
}

// endScan stops logging the forgets of a full read.
func (m *tagMemo) endScan() {
	m.mu.Lock()
	m.scanning, m.forgotten = false, nil
	m.mu.Unlock()
	m.scan.Unlock()
}

// install makes t, read by the full read begun with beginScan, the
// memo's base, with the keys forgotten since the read began forgotten in
// it (and after, as in any base). It frees t instead if the memo is off
// or released, or the log was lost.
func (m *tagMemo) install(t *tagTable) {
	m.mu.Lock()
	old := t
	if !m.off && m.scanning && !m.lost && !m.released {
		for _, h := range m.forgotten {
			if i := t.find(h); i >= 0 && t.tags.s[i].manifest != tagShared {
				t.tags.s[i].manifest = tagForgotten
			}
		}
		old, m.base, m.held = m.base, t, len(t.tags.s)
	}
	m.mu.Unlock()
	old.free() // no lookup reads it: they all hold mu
}

// release frees the table, and keeps full reads from installing another
// until resume; lookups meanwhile ask the index, and add to the memo as
// they do beside a table.
func (m *tagMemo) release() {
	m.mu.Lock()
	old := m.base
	m.base, m.released = nil, true
	m.mu.Unlock()
	old.free()
}

// resume lets full reads install a table again (after release).
func (m *tagMemo) resume() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.released = false
}

// isReleased reports whether the memo is released (release, until
// resume).
func (m *tagMemo) isReleased() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.released
}

// sizeHint is how many tags the last table held.
func (m *tagMemo) sizeHint() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held
}

// disable turns the memo off for good (a shared index, a closed one)
// and frees its table.
func (m *tagMemo) disable() {
	m.mu.Lock()
	old := m.base
	m.off, m.base, m.added = true, nil, nil
	m.epoch++
	m.mu.Unlock()
	old.free()
}

// holds reports how many tags the memo holds and the bytes of its base
// (tests).
func (m *tagMemo) holds() (tags int, bytes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tags = len(m.added)
	if t := m.base; t != nil {
		for _, s := range t.tags.s {
			if s.manifest < tagShared {
				tags++
			}
		}
		bytes = len(t.tags.mem) + 4*len(t.starts) + len(t.digests.mem) + len(t.sizes.mem) + len(t.types.mem)
	}
	return tags, bytes
}

// tagTable is a full read's tags, sorted by hash, and the manifests they
// name, in columns outside the Go heap (see tagMemo).
type tagTable struct {
	tags column[tagSlot]
	// starts[p] is the first tag whose hash's top 16 bits are p or more.
	starts []uint32
	// Per manifest: its sha256 digest, size and type.
	digests column[[32]byte]
	sizes   column[int64]
	types   column[uint8]
}

// tagSlot is a tag: its key's hash, CheckedAt (Unix seconds) and its
// manifest's number (or tagForgotten, tagShared).
type tagSlot struct {
	hash     uint64
	checked  uint32
	manifest uint32
}

// find returns the index of the tag whose hash is h, -1 if none.
func (t *tagTable) find(h uint64) int {
	p := h >> 48
	lo, hi := t.starts[p], t.starts[p+1]
	i, ok := slices.BinarySearchFunc(t.tags.s[lo:hi], h, func(s tagSlot, h uint64) int { return cmp.Compare(s.hash, h) })
	if !ok {
		return -1
	}
	return int(lo) + i
}

// free unmaps t's columns (nil: nothing).
func (t *tagTable) free() {
	if t != nil {
		t.tags.free()
		t.digests.free()
		t.sizes.free()
		t.types.free()
	}
}

// tagTableBuilder collects a full read's tags into the columns of a
// tagTable. Nothing of it is in the Go heap: a million tags there would
// raise the collector's goal by their size, and the requests after the
// read would then allocate fresh pages, a page fault every few requests,
// until the next collection.
type tagTableBuilder struct {
	memo *tagMemo
	t    tagTable
	// numbers is an open-addressed set of the manifests collected (their
	// number + 1; 0: empty), by their digests' first 8 bytes.
	numbers column[uint32]
}

// newTagTableBuilder returns a builder for m's table, sized for as many
// tags as its last one held (no copies as it grows to about that).
func newTagTableBuilder(m *tagMemo) (*tagTableBuilder, error) {
	b := &tagTableBuilder{memo: m}
	if n := min(m.sizeHint(), maxTagBase); n > 0 {
		if err := b.t.tags.grow(n + n/16); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// add collects the tag record raw under key k, if the memo can hold it
// and is not full; it reads nothing of raw after it returns. It fails
// only if memory cannot be mapped.
func (b *tagTableBuilder) add(k, raw []byte) error {
	if len(b.t.tags.s) >= maxTagBase || !isTagBinary(raw) {
		return nil
	}
	d, rec, err := parseTagBinary(raw)
	if err != nil {
		return nil
	}
	e, ok := tagEntryOf(d, rec.CheckedAt, rec.Type, rec.Size)
	if !ok {
		return nil
	}
	n, err := b.number(e)
	if err != nil {
		return err
	}
	return b.t.tags.append(tagSlot{hash: b.memo.hash(k), checked: e.checked, manifest: n})
}

// number returns the number of e's manifest (digest, size and type:
// records of one digest written at different times may say different
// types), collecting it if it is new.
func (b *tagTableBuilder) number(e tagEntry) (uint32, error) {
	if 2*(len(b.t.digests.s)+1) > len(b.numbers.s) {
		if err := b.rehash(max(2*len(b.numbers.s), 1<<12)); err != nil {
			return 0, err
		}
	}
	i := b.slot(e.digest, e.size, e.typ)
	if n := b.numbers.s[i]; n != 0 {
		return n - 1, nil
	}
	n := uint32(len(b.t.digests.s))
	if err := errors.Join(b.t.digests.append(e.digest), b.t.sizes.append(e.size), b.t.types.append(e.typ)); err != nil {
		return 0, err
	}
	b.numbers.s[i] = n + 1
	return n, nil
}

// slot returns where the manifest is in numbers, or the empty slot it
// would take.
func (b *tagTableBuilder) slot(d [32]byte, size int64, typ uint8) int {
	mask := len(b.numbers.s) - 1
	for i := int(binary.LittleEndian.Uint64(d[:])) & mask; ; i = (i + 1) & mask {
		n := b.numbers.s[i]
		if n == 0 || b.t.digests.s[n-1] == d && b.t.sizes.s[n-1] == size && b.t.types.s[n-1] == typ {
			return i
		}
	}
}

// rehash makes numbers size slots (a power of two) and puts the
// manifests collected in them.
func (b *tagTableBuilder) rehash(size int) error {
	b.numbers.free()
	b.numbers = column[uint32]{}
	if err := b.numbers.grow(size); err != nil {
		return err
	}
	b.numbers.s = b.numbers.s[:size]
	for n, d := range b.t.digests.s {
		b.numbers.s[b.slot(d, b.t.sizes.s[n], b.t.types.s[n])] = uint32(n) + 1
	}
	return nil
}

// table sorts what add collected into a tagTable, which takes its
// columns; the builder is done.
func (b *tagTableBuilder) table() *tagTable {
	b.numbers.free()
	t := b.t
	tags := t.tags.s
	slices.SortFunc(tags, func(x, y tagSlot) int { return cmp.Compare(x.hash, y.hash) })
	for i := 1; i < len(tags); i++ {
		if tags[i].hash == tags[i-1].hash {
			tags[i].manifest, tags[i-1].manifest = tagShared, tagShared
		}
	}
	t.starts = make([]uint32, 1<<16+1)
	p := 0
	for i, s := range tags {
		for ; p <= int(s.hash>>48); p++ {
			t.starts[p] = uint32(i)
		}
	}
	for ; p < len(t.starts); p++ {
		t.starts[p] = uint32(len(tags))
	}
	return &t
}

// free unmaps what the builder collected, for a read that installs
// nothing.
func (b *tagTableBuilder) free() {
	b.numbers.free()
	b.t.free()
}

// column is a growing array of T outside the Go heap, in a region
// (reserveRegion) that is resident as far as it is filled.
type column[T any] struct {
	mem []byte
	s   []T
}

// append adds v, moving the column to a region twice as large when full.
func (c *column[T]) append(v T) error {
	if len(c.s) == cap(c.s) {
		if err := c.grow(max(2*cap(c.s), 1<<12)); err != nil {
			return err
		}
	}
	c.s = append(c.s, v) // within the capacity: never moved to the heap
	return nil
}

// grow moves the column to a region of n values.
func (c *column[T]) grow(n int) error {
	var zero T
	mem, err := reserveRegion(n * int(unsafe.Sizeof(zero)))
	if err != nil {
		return fmt.Errorf("index: memory for the tag memo: %w", err)
	}
	s := unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(mem))), n)[:len(c.s)]
	copy(s, c.s)
	c.free()
	c.mem, c.s = mem, s
	return nil
}

// free unmaps the column's region.
func (c *column[T]) free() {
	if c.mem != nil {
		freeRegion(c.mem)
		c.mem, c.s = nil, nil
	}
}

// tagEntryOf is a record of the manifest d, confirmed at checked, of
// type typ and size size, as the memo keeps it; ok is false if it cannot
// keep it.
func tagEntryOf[T ~string | ~[]byte](d T, checked time.Time, typ uint8, size int64) (e tagEntry, ok bool) {
	sum, ok := sha256Key(d)
	if !ok || manifestTypeName(typ) == "" || size <= 0 {
		return e, false
	}
	sec := checked.Unix()
	if sec < 0 || sec > math.MaxUint32 {
		return e, false
	}
	return tagEntry{digest: sum, checked: uint32(sec), size: size, typ: typ}, true
}

// tagRecordOf is the record a hit reads, from what the memo keeps.
func tagRecordOf(d *[32]byte, checked uint32, typ uint8, size int64) TagRecord {
	var b [7 + 64]byte
	copy(b[:], "sha256:")
	hex.Encode(b[7:], d[:])
	return TagRecord{Digest: digest.Digest(b[:]), CheckedAt: time.Unix(int64(checked), 0).UTC(), Type: typ, Size: size}
}
