package proxy

import (
	"errors"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"

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
// to store content and until when it is believed; and per repository and
// manifest digest, its refusal of that manifest itself.
type writeRefusals struct {
	byRepo     *lru.Cache[string, writeRefusal]
	byManifest *lru.Cache[string, writeRefusal]
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

// errRefusedLately marks a manifest not sent to the store because the
// store refused it (storage.ErrManifestRefused) within the last
// writeRetryAfter: a fill failing for it adds no failure to the status
// again.
var errRefusedLately = errors.New("refused by the store within the last minute; not sent again yet")

// manifestRefusalKey names a manifest of t's repository of the store.
// By digest, not media type: a registry may refuse a manifest for what it
// holds (older than image-spec 1.1, a subject field) and take others of
// its media type.
func manifestRefusalKey(t target, dgst digest.Digest) string {
	return t.storeRepo() + "@" + dgst.String()
}

// noteManifestRefusal records the outcome of a push of t's manifest dgst
// to the store: its refusal (storage.ErrManifestRefused) is remembered
// for writeRetryAfter, as a refusal of every write is (noteRefusal); a
// push that succeeded forgets it.
func (p *Proxy) noteManifestRefusal(t target, dgst digest.Digest, err error) {
	switch {
	case err == nil:
		p.refusals.byManifest.Remove(manifestRefusalKey(t, dgst))
	case errors.Is(err, storage.ErrManifestRefused):
		p.refusals.byManifest.Add(manifestRefusalKey(t, dgst), writeRefusal{err: err, until: p.now().Add(writeRetryAfter)})
	}
}

// manifestRefused returns the store's refusal of t's manifest dgst,
// marked errRefusedLately, if it came within the last writeRetryAfter
// and no push of it has succeeded since, else nil: the image is not sent
// again meanwhile, its blobs not checked, only to be refused again.
func (p *Proxy) manifestRefused(t target, dgst digest.Digest) error {
	ref, ok := p.refusals.byManifest.Get(manifestRefusalKey(t, dgst))
	if !ok || !p.now().Before(ref.until) {
		return nil
	}
	return fmt.Errorf("manifest %s %w: %w", dgst, errRefusedLately, ref.err)
}
