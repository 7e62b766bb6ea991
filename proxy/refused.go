package proxy

import (
	"errors"
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
// to store content and until when it is believed.
type writeRefusals struct {
	byRepo *lru.Cache[string, writeRefusal]
}

type writeRefusal struct {
	err   error
	until time.Time
}

// noteRefusal records the outcome of a write of t's content to the
// store: a refusal (storage.ErrWriteRefused) is remembered for
// writeRetryAfter; a write that succeeded forgets it.
func (p *Proxy) noteRefusal(t target, err error) {
	switch {
	case err == nil:
		p.refusals.byRepo.Remove(t.storeRepo())
	case errors.Is(err, storage.ErrWriteRefused):
		p.refusals.byRepo.Add(t.storeRepo(), writeRefusal{err: err, until: p.now().Add(writeRetryAfter)})
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

// WritesRefused returns the store's latest refusal to store content that
// is still believed (see writesRefused), of any repository, else nil: for
// the status and the metrics, read at each look.
func (p *Proxy) WritesRefused() error {
	now := p.now()
	var last writeRefusal
	for _, ref := range p.refusals.byRepo.Values() {
		if now.Before(ref.until) && ref.until.After(last.until) {
			last = ref
		}
	}
	return last.err
}
