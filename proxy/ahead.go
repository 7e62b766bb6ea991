package proxy

import (
	"context"
	"sync"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/docker-mirror/docker-mirror/oci"
)

// DefaultUpstreamConnections is how many blob downloads the mirror runs at
// once from one upstream for itself (fetching ahead and the background
// fill) unless WithUpstreamConnections says otherwise. A client's own miss
// is never queued behind it. It stays well under upstream.MaxConnsPerHost.
const DefaultUpstreamConnections = 16

// WithUpstreamConnections sets the per-upstream budget of blob downloads
// the mirror starts for itself (default DefaultUpstreamConnections).
func WithUpstreamConnections(n int) Option {
	return func(p *Proxy) { p.upstreamConns = int64(max(n, 1)) }
}

// WithFetchAhead turns fetching ahead on or off (default on): when a
// client gets an image manifest, every blob it lists that is not stored
// starts downloading at once, so that the client's blob requests, which
// come a few at a time (dockerd: 3), find them in flight or stored.
func WithFetchAhead(on bool) Option { return func(p *Proxy) { p.fetchAhead = on } }

// budgets holds one connection budget per upstream host.
type budgets struct {
	size int64
	mu   sync.Mutex
	m    map[string]*semaphore.Weighted
}

func (b *budgets) of(host string) *semaphore.Weighted {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.m[host]
	if !ok {
		if b.m == nil {
			b.m = map[string]*semaphore.Weighted{}
		}
		s = semaphore.NewWeighted(b.size)
		b.m[host] = s
	}
	return s
}

// acquireBudget waits for a connection of t's upstream for a download the
// mirror wants for itself. A client asking for the blob meanwhile hurries
// it: it then goes ahead at once, without a connection of the budget
// (release is a no-op), as a client's own miss would.
func (p *Proxy) acquireBudget(ctx context.Context, t target, dl *download) (release func(), err error) {
	sem := p.budgets.of(t.host())
	if sem.TryAcquire(1) {
		return func() { sem.Release(1) }, nil
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-dl.hurried:
			cancel()
		case <-actx.Done():
		}
	}()
	if err := sem.Acquire(actx, 1); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return func() {}, nil // hurried
	}
	return func() { sem.Release(1) }, nil
}

// startFetchAhead starts downloading, in the background, every blob of
// image manifest m that is neither stored nor downloading. The downloads
// are the mirror's own: a client hanging up does not cancel them, and a
// client asking for one of them joins it. Counted in p.work from the
// start, so WaitIdle waits for them.
func (p *Proxy) startFetchAhead(ctx context.Context, t target, m *storedManifest) {
	if !p.fetchAhead || oci.IsIndex(m.mediaType) {
		return
	}
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil || doc.Config == nil {
		return
	}
	blobs := make([]v1.Descriptor, 0, 1+len(doc.Layers))
	blobs = append(blobs, *doc.Config)
	blobs = append(blobs, doc.Layers...)
	if !p.work.start() {
		return
	}
	ctx, cancel := p.detach(ctx, p.fillTimeout)
	go func() {
		defer p.work.done()
		defer cancel()
		var g errgroup.Group
		for _, b := range blobs {
			if len(b.URLs) > 0 || b.Digest.Validate() != nil {
				continue
			}
			g.Go(func() error {
				// Recorded: stored already (the fill or the client links
				// it). A cheap look in the index, not the store, which
				// may be remote: this runs on every image manifest GET.
				if _, ok, err := p.index.Blob(b.Digest); err != nil || ok {
					return nil
				}
				if err := p.storeListed(ctx, t, b.Digest, b.Size); err != nil {
					p.log.Debug("fetching ahead", "upstream", t.host(), "repo", t.repo, "digest", b.Digest, "error", err)
				}
				return nil
			})
		}
		_ = g.Wait()
	}()
}
