package proxy

import (
	"errors"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/docker-mirror/docker-mirror/storage"
)

// writeRetryAfter is how long a store's refusal to store a repository's
// content (storage.ErrWriteRefused: a read-only registry destination, a
// quota used up, credentials that may not push) is believed: meanwhile
// that repository's misses are served from the upstream without a fill,
// which would have the upstream send the image's blobs again only for
// the store to refuse them again.
const writeRetryAfter = time.Minute

// maxWriteRefusals bounds the repositories whose refusal is remembered,
// the least recently refused dropped first.
const maxWriteRefusals = 1024

// writeRefusals remembers, per repository of the store, its last refusal
// to store content and until when it is believed; last is the latest of
// them not since forgotten, which the status and the metrics show.
type writeRefusals struct {
	byRepo *lru.Cache[string, writeRefusal]
	mu     sync.Mutex
	last   writeRefusal
}

type writeRefusal struct {
	repo  string
	err   error
	until time.Time
}

// noteRefusal records the outcome of a write of t's content to the
// store: a refusal (storage.ErrWriteRefused) is remembered for
// writeRetryAfter; a write that succeeded forgets it.
func (p *Proxy) noteRefusal(t target, err error) {
	r, repo := p.refusals, t.storeRepo()
	switch {
	case err == nil:
		if r.byRepo.Contains(repo) {
			r.byRepo.Remove(repo)
			r.mu.Lock()
			if r.last.repo == repo {
				// Another repository's refusal may still be believed (its
				// misses still not stored): that one is shown now.
				r.last = writeRefusal{}
				now := p.now()
				for _, ref := range r.byRepo.Values() {
					if ref.repo != repo && now.Before(ref.until) && ref.until.After(r.last.until) {
						r.last = ref
					}
				}
			}
			r.mu.Unlock()
		}
	case errors.Is(err, storage.ErrWriteRefused):
		ref := writeRefusal{repo: repo, err: err, until: p.now().Add(writeRetryAfter)}
		r.byRepo.Add(repo, ref)
		r.mu.Lock()
		r.last = ref
		r.mu.Unlock()
	}
}

// writesRefused returns the store's refusal to store t's content if it
// came within the last writeRetryAfter and no write of t's has succeeded
// since, else nil.
func (p *Proxy) writesRefused(t target) error {
	ref, ok := p.refusals.byRepo.Get(t.storeRepo())
	if !ok || !p.now().Before(ref.until) {
		return nil
	}
	return ref.err
}

// WritesRefused returns the store's latest refusal to store content, if
// it is still believed (see writesRefused), else nil.
func (p *Proxy) WritesRefused() error {
	r := p.refusals
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.err != nil && !p.now().Before(r.last.until) {
		r.last = writeRefusal{}
	}
	return r.last.err
}
