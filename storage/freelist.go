package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// BeginPass tells the index that a pass of the cache's lifecycle (a
// collection, an eviction) begins: until end is called, its commits, and
// every other write's meanwhile, leave bbolt's freelist out, and end
// writes it if any did (a commit of its own). Passes may overlap; the
// last end writes it.
//
// bbolt writes its whole freelist with every commit: at 100k images,
// after an eviction, ~98k free pages, ~185 pages of it (~740 KiB)
// beside the 150–263 pages an eviction's transaction changed, written and
// fdatasynced while the write lock is held, every pull's record waiting
// behind it. A pass commits hundreds of transactions in a row, each
// bounded in time so that pulls go on (writes.go): the freelist was
// about half of what they wrote.
//
// The price is a crash during a pass: the file's last commit then names
// no freelist, and the next open rebuilds it by walking every page of
// the index (bbolt's freepages, in bolt.Open; OpenIndex reads the file
// ahead of it) and writes it back, before the index serves: at 100k
// images ~0.9 s, ~2.4 s cold, the whole file mapped for the moment of
// the open (docs/performance-rounds.md, Round 16). Nothing is lost or
// torn: the freelist is bbolt's record of unused pages, and a commit
// that skips it is as atomic as one that writes it.
func (ix *Index) BeginPass() (end func()) {
	ix.passes.Add(1)
	return sync.OnceFunc(func() {
		if ix.passes.Add(-1) > 0 {
			return // another pass still writes: its end writes the freelist
		}
		if err := ix.syncFreelist(); err != nil {
			ix.logFreelist(err)
		}
	})
}

// skipFreelist sets whether the commit of the write transaction tx leaves
// the freelist out: while a pass runs (BeginPass). tx holds the write
// lock, which orders every write of the setting with the commits that
// read it.
func (ix *Index) skipFreelist(tx *bolt.Tx) {
	skip := ix.passes.Load() > 0
	tx.DB().NoFreelistSync = skip
	if skip {
		ix.freelistSkipped.Store(true)
	}
}

// syncFreelist writes the freelist if a commit may have left it out since
// it was last written: at a pass's end, and when the index is closed
// (under a pass, if one runs), so that the next open reads it rather than
// every page.
func (ix *Index) syncFreelist() error {
	if !ix.freelistSkipped.Swap(false) {
		return nil
	}
	err := ix.write(func(tx *bolt.Tx) error {
		tx.DB().NoFreelistSync = false
		return nil
	})
	if err != nil {
		ix.freelistSkipped.Store(true)
	}
	return err
}

// logFreelist logs a failed write of the freelist at a pass's end: the
// next write writes it (no pass running), and until then a crash costs
// the next open a read of the whole index, not data.
func (ix *Index) logFreelist(err error) {
	if l := ix.log.Load(); l != nil {
		l.LogAttrs(context.Background(), slog.LevelWarn, "index: the freelist could not be written after a pass (the next write writes it)", slog.String("error", err.Error()))
	}
}

// FreelistWritten reports whether the last commit of the bbolt file at
// path wrote bbolt's freelist, as its meta page says: the index leaves it
// out while a pass runs (BeginPass), so a crash during one leaves a file
// without it.
//
// bbolt's on-disk layout (go.etcd.io/bbolt, internal/common): two meta
// pages at the file's start, each a 16-byte page header then magic,
// version, page size and flags (4 bytes each), the root bucket (16), the
// freelist's page id (8), the high-water page id (8) and the transaction
// id (8), in the machine's byte order (little-endian wherever this is
// built); the meta with the higher transaction id is the last commit's,
// and a freelist id of all ones says it has none.
func FreelistWritten(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	m, err := lastCommit(f, path)
	if err != nil {
		return false, err
	}
	return m.freelist != ^uint64(0), nil
}

// metaPage is what a bbolt meta page says of its commit.
type metaPage struct {
	pageSize, freelist, pgid, txid uint64
	magic                          bool // it begins with bbolt's magic number
	valid                          bool // bbolt's magic and version, and its checksum matches
}

// lastCommit reads the meta page of the last commit of the bbolt file f: of
// the two, the valid one with the higher transaction id (the second alone if
// the first is damaged), as bbolt's open picks it (FreelistWritten's comment
// has the layout; the high-water page id follows the freelist's, and an
// FNV-1a checksum of what precedes it follows the transaction id).
func lastCommit(f *os.File, path string) (metaPage, error) {
	const (
		header   = 16
		metaSize = 64
		sizeAt   = 8
		freeAt   = 32
		pgidAt   = 40
		txidAt   = 48
		sumAt    = 56
		version  = 2
		magic    = 0xED0CDAED
	)
	le := binary.LittleEndian
	meta := func(at int64) (metaPage, error) {
		m := make([]byte, metaSize)
		if _, err := f.ReadAt(m, at+header); err != nil {
			return metaPage{}, fmt.Errorf("%s: reading a meta page: %w", path, err)
		}
		h := fnv.New64a()
		h.Write(m[:sumAt])
		return metaPage{pageSize: uint64(le.Uint32(m[sizeAt:])), freelist: le.Uint64(m[freeAt:]),
			pgid: le.Uint64(m[pgidAt:]), txid: le.Uint64(m[txidAt:]), magic: le.Uint32(m) == magic,
			valid: le.Uint32(m) == magic && le.Uint32(m[4:]) == version && h.Sum64() == le.Uint64(m[sumAt:])}, nil
	}
	first, err := meta(0)
	if err != nil {
		return metaPage{}, err
	}
	var second metaPage
	if first.valid {
		if second, err = meta(int64(first.pageSize)); err != nil {
			return metaPage{}, err
		}
	} else {
		// Its page size unknown (a zeroed or damaged first page), the
		// second is looked for at each size bbolt makes pages of, as
		// bbolt's open looks for it, up to the file's end.
		for size := int64(1 << 10); size <= 16<<20 && !second.valid; size <<= 1 {
			if second, err = meta(size); err != nil {
				break
			}
		}
	}
	last := first
	if second.valid && (!first.valid || second.txid > first.txid) {
		last = second
	}
	switch {
	case last.valid:
		return last, nil
	case !first.magic && !second.magic:
		return metaPage{}, fmt.Errorf("%s: not a bbolt file", path)
	default:
		return metaPage{}, fmt.Errorf("%s: both meta pages are damaged", path)
	}
}

// indexRemedy is what to do with an index that cannot be opened.
const indexRemedy = "move it aside and start again: the mirror makes a new index, and fills it again as images are pulled"

// checkIndexFile refuses, before bbolt maps it, an index file that bbolt
// would fail to open or would read past the end of: bbolt maps more than
// the file holds, and a page its last commit names beyond the file's end
// (a file cut short: a disk that filled, a copy that stopped) kills the
// process with SIGBUS, no error returned. A missing or empty file is
// bbolt's to create.
func checkIndexFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("index %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("index %s: %w", path, err)
	}
	if fi.Size() == 0 {
		return nil
	}
	m, err := lastCommit(f, path)
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("index %s is cut short (%d bytes, not even its header): %s", path, fi.Size(), indexRemedy)
	case err != nil:
		return fmt.Errorf("index %s is damaged or not an index (%v): %s", path, err, indexRemedy)
	}
	if need := m.pgid * m.pageSize; uint64(fi.Size()) < need {
		return fmt.Errorf("index %s is cut short (%d bytes, its last commit needs %d: the disk filled, or a copy stopped): %s", path, fi.Size(), need, indexRemedy)
	}
	return nil
}

// readAhead reads the file at path into the page cache, in its order, in
// large reads: what a walk of its pages then faults in comes from memory.
// (POSIX_FADV_WILLNEED would not do: Linux reads only a readahead window
// of it, ~1 MiB.) Errors are ignored: it only saves time.
func readAhead(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Read(buf); err != nil {
			return // io.EOF, or a read that failed: bbolt's open reports it
		}
	}
}
