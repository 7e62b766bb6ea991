package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/storage"
)

// BlobLeases are the leases replicas on one store take before fetching a
// blob from the upstream (package lease): one replica fetches, the others
// wait for the blob to reach the store, even when they disagree on who
// owns it.
type BlobLeases interface {
	// Take takes the lease of name; if another replica holds it, h is
	// nil and holder and until say who and until when. An error means
	// the leases cannot be reached.
	Take(ctx context.Context, name string) (h *lease.Held, holder string, until time.Time, err error)
}

// LateBlobLeases are BlobLeases whose store could not be probed for
// conditional writes at the start (it was unreachable): Take answers
// lease.ErrUnsupported until a probe tells they work. The proxy probes
// in the background when a fetch finds it due, one probe at a time: no
// client's fetch waits for a bucket that may hang.
type LateBlobLeases interface {
	BlobLeases
	// ProbeDue reports whether it is time to probe again.
	ProbeDue() bool
	// Probe probes the store, if it is still due and no other probe
	// runs, until ctx ends.
	Probe(ctx context.Context)
}

// WithBlobLeases makes the proxy take a lease before fetching a blob from
// the upstream (default: none, as on a store of one replica).
func WithBlobLeases(l BlobLeases) Option { return func(p *Proxy) { p.leases = l } }

// Waiting for a blob another replica holds the lease of: the store is
// polled with a back-off between these bounds.
const (
	leaseWaitMin = 50 * time.Millisecond
	leaseWaitMax = time.Second
)

// leaseBlob takes the lease of fetching dgst from the upstream. While
// another replica holds it, it waits: until the blob is in the store
// (stored true: read it from there), or until the lease is released (the
// holder's fetch failed) or expired (the holder died), when it takes the
// lease and fetches. The release func gives the lease up. Without leases,
// or when they cannot be reached, the blob is fetched without one, as
// without a cluster.
func (p *Proxy) leaseBlob(ctx context.Context, t target, dgst digest.Digest) (release func(), stored bool, err error) {
	none := func() {}
	if p.leases == nil {
		return none, false, nil
	}
	wait := leaseWaitMin
	for {
		h, holder, until, err := p.leases.Take(ctx, dgst.String())
		if errors.Is(err, lease.ErrUnsupported) {
			p.probeLeases(ctx)
			return none, false, nil // not yet, or not at all: said at the probe
		}
		if err != nil {
			if ctx.Err() != nil {
				return none, false, ctx.Err()
			}
			p.log.Warn("blob fetch lease unavailable; fetching without one", "digest", dgst, "error", err)
			return none, false, nil
		}
		// Stored meanwhile (the holder stores, then releases)?
		if _, err := p.store.Stat(ctx, t.storeRepo(), dgst); err == nil {
			if h != nil {
				h.Release()
			}
			return none, true, nil
		}
		if h != nil {
			return h.Release, false, nil
		}
		p.log.Debug("waiting for a blob another replica fetches", "digest", dgst, "holder", holder, "until", until)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return none, false, ctx.Err()
		case <-timer.C:
		}
		wait = min(2*wait, leaseWaitMax)
	}
}

// probeLeases starts the probe of late leases (LateBlobLeases) if it is
// due: in the background, counted in work and ended by Close, and not
// waited for (Probe itself runs one probe at a time).
func (p *Proxy) probeLeases(ctx context.Context) {
	l, ok := p.leases.(LateBlobLeases)
	if !ok || !l.ProbeDue() || !p.work.start() {
		return
	}
	go func() {
		defer p.work.done()
		ctx, cancel := p.detach(ctx, 0)
		defer cancel()
		l.Probe(ctx)
	}()
}

// openStored opens a blob another replica stored, from its start, with
// its size, if t may have it (storedBlob: linked, or vouched for by t's
// upstream, as the holder may have fetched it for another repository).
// A read that breaks is reopened where it broke, as a hit's is
// (openServed).
func (p *Proxy) openStored(ctx context.Context, t target, dgst digest.Digest) (io.ReadCloser, int64, error) {
	size, ok, err := p.storedBlob(ctx, t, dgst)
	if err != nil {
		return nil, 0, err
	}
	if !ok {
		return nil, 0, fmt.Errorf("blob %s: %w", dgst, storage.ErrNotFound)
	}
	rc, err := p.openServed(ctx, t, dgst, 0, -1)
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", dgst, err)
	}
	return rc, size, nil
}
