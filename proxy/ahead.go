package proxy

import (
	"context"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

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
	// Queued: fetching ahead waits no longer for this request.
	noteRequested(ctx)
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
//
// The channel returned (nil if nothing was started) is closed once every
// blob has its upstream request on its way (written), is queued for the
// upstream's budget, or needs no request (stored, joined, failed): the
// manifest's own store write and record, and the background fill after
// them, and the client's answer wait for it (afterRequests), so that they
// do not compete with the blobs' requests for the CPU in the burst that
// follows a manifest.
func (p *Proxy) startFetchAhead(ctx context.Context, t target, m *storedManifest) <-chan struct{} {
	if !p.fetchAhead || oci.IsIndex(m.mediaType) {
		return nil
	}
	doc, _, err := oci.ParseManifest(m.body, m.mediaType)
	if err != nil || doc.Config == nil {
		return nil
	}
	blobs := make([]v1.Descriptor, 0, 1+len(doc.Layers))
	for _, b := range append([]v1.Descriptor{*doc.Config}, doc.Layers...) {
		if len(b.URLs) == 0 && oci.ValidDigest(b.Digest) {
			blobs = append(blobs, b)
		}
	}
	if len(blobs) == 0 || !p.work.start() {
		return nil
	}
	requested := make(chan struct{})
	var pending atomic.Int64
	pending.Store(int64(len(blobs)))
	ctx, cancel := p.detachIdle(ctx, p.fillTimeout)
	go func() {
		defer p.work.done()
		defer cancel()
		var g errgroup.Group
		for _, b := range blobs {
			sent := sync.OnceFunc(func() {
				if pending.Add(-1) == 0 {
					close(requested)
				}
			})
			g.Go(func() error {
				defer sent() // whatever happened, it is not on its way any more
				// Recorded: stored already (the fill or the client links
				// it). A cheap look in the index, not the store, which
				// may be remote: this runs on every image manifest GET.
				if _, ok, err := p.index.Blob(b.Digest); err != nil || ok {
					return nil
				}
				if err := p.storeListed(withRequested(ctx, sent), t, b.Digest, b.Size, nil); err != nil {
					p.log.Debug("fetching ahead", "upstream", t.host(), "repo", t.repo, "digest", b.Digest, "error", err)
				}
				return nil
			})
		}
		_ = g.Wait()
	}()
	return requested
}

// maxRequestsWait bounds how long a manifest's store write and record wait
// for the requests of the blobs fetched ahead (afterRequests): a request
// that cannot be sent (an upstream that does not accept connections) must
// not keep the manifest out of the index for long.
const maxRequestsWait = time.Second

// maxAnswerWait bounds how long a client's answer with a manifest waits
// for the requests of its blobs fetched ahead: a few ms when the upstream
// takes connections, and a client is not kept waiting long when it does
// not.
const maxAnswerWait = 50 * time.Millisecond

// afterRequests waits until requested (from startFetchAhead) is closed,
// limit has passed, or ctx is done; at once if requested is nil.
func afterRequests(ctx context.Context, requested <-chan struct{}, limit time.Duration) {
	if requested == nil {
		return
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-requested:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// requestedKey is the context key of the func a download fetched ahead
// calls once its upstream request is on its way (withRequested).
type requestedKey struct{}

// withRequested returns ctx carrying sent, which noteRequested calls: a
// download started with it (newDownload keeps ctx's values) calls it once
// its upstream request has been written, or it waits for the upstream's
// budget, or it ends; a taker that joins a running download or finds the
// blob stored calls it at once.
func withRequested(ctx context.Context, sent func()) context.Context {
	return context.WithValue(ctx, requestedKey{}, sent)
}

// noteRequested calls ctx's func of withRequested, if any (it is
// idempotent).
func noteRequested(ctx context.Context) {
	if sent, ok := ctx.Value(requestedKey{}).(func()); ok {
		sent()
	}
}

// tracingRequested returns ctx with an HTTP client trace that calls ctx's
// func of withRequested once the request is written; ctx itself if it has
// none.
func tracingRequested(ctx context.Context) context.Context {
	sent, ok := ctx.Value(requestedKey{}).(func())
	if !ok {
		return ctx
	}
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { sent() },
	})
}
