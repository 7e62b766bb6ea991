package proxy

import (
	"sync"

	"github.com/docker-mirror/docker-mirror/storage"
)

// fullness tracks whether the store is full: set when a write to the store
// or the spool found no space, cleared when a write to the store succeeds
// or space has been freed (the index's stored size fell below what it was
// then: eviction or collection removed content).
type fullness struct {
	mu     sync.Mutex
	full   bool
	stored int64 // Index.StoredBytes when a write last found no space
}

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
		p.full.mu.Lock()
		p.full.full, p.full.stored = true, p.index.StoredBytes()
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
// and none has been freed since.
func (p *Proxy) StoreFull() bool {
	p.full.mu.Lock()
	defer p.full.mu.Unlock()
	if p.full.full && p.index.StoredBytes() < p.full.stored {
		p.full.full = false
	}
	return p.full.full
}
