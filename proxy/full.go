package proxy

import (
	"sync"

	"github.com/docker-mirror/docker-mirror/storage"
)

// fullness tracks whether the store is full: set when a write to the store
// or the spool found no space, cleared when a write to the store succeeds
// or space has been freed (the index's stored size fell below what it was
// then: eviction or collection removed content; or the disk's free space
// grew by fullMargin: content removed by hand).
type fullness struct {
	mu     sync.Mutex
	full   bool
	stored int64 // Index.StoredBytes when a write last found no space
	// free is the disk's free space then, if known and the write's
	// refusal was the disk's (freeKnown).
	free      uint64
	freeKnown bool
}

// fullMargin is the free space under which the store's disk counts as
// full whatever the writes found (a mirror started on a full disk), and
// by which its free space must grow to clear a write's finding no space.
const fullMargin = 64 << 20

// noteWrite records the outcome of a write to the store (err nil: it
// succeeded) or a failed write to the spool, and returns err, marked
// storage.ErrFull if it found no space.
func (p *Proxy) noteWrite(err error) error {
	switch {
	case err == nil:
		p.full.mu.Lock()
		p.full.full = false
		p.full.mu.Unlock()
	case storage.IsFull(err):
		// Only the disk's own refusal is cleared by its free space: a
		// quota's (EDQUOT) or an S3-compatible store's is not measured
		// by it, and the disk gains room as downloads' spool files go.
		free, known := p.freeSpace()
		known = known && storage.IsDiskFull(err)
		p.full.mu.Lock()
		p.full.full, p.full.stored = true, p.index.StoredBytes()
		p.full.free, p.full.freeKnown = free, known
		p.full.mu.Unlock()
		return storage.MarkFull(err)
	}
	return err
}

// noteFull is noteWrite for a write that failed, or one whose success
// says nothing of the store's space (the index's).
func (p *Proxy) noteFull(err error) error {
	if err == nil {
		return nil
	}
	return p.noteWrite(err)
}

// StoreFull reports whether the last write to the store found no space,
// and none has been freed since, or the store's disk has less than
// fullMargin free: a mirror restarted on a full disk, or whose disk an
// operator freed while it was out of rotation for being full
// (readyz_fail_when_full: no miss came to find the space), says so before
// a write does.
func (p *Proxy) StoreFull() bool {
	free, known := p.freeSpace()
	p.full.mu.Lock()
	defer p.full.mu.Unlock()
	if p.full.full && (p.index.StoredBytes() < p.full.stored || known && p.full.freeKnown && free >= p.full.free+fullMargin) {
		p.full.full = false
	}
	return p.full.full || known && free < fullMargin
}

// freeSpace returns the free space of the store's disk, if known
// (WithFreeSpace).
func (p *Proxy) freeSpace() (uint64, bool) {
	if p.diskFree == nil {
		return 0, false
	}
	return p.diskFree()
}
