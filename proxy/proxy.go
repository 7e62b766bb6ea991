// Package proxy is docker-mirror's HTTP frontend and fill engine: it serves
// the registry v2 / OCI distribution pull API from the store, fetches what
// is missing from the upstream (one fetch per tag and per digest, shared by
// every client asking meanwhile), and mirrors every selected platform of an
// index in the background.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// DefaultHost is the upstream a name without a host prefix belongs to.
const DefaultHost = oci.DockerHubHost

// Proxy is the pull-through cache. Create it with New, serve Handler(),
// and Close it when done.
type Proxy struct {
	store     storage.Store
	index     *storage.Index
	upstreams map[string]*upstream.Client
	log       *slog.Logger
	metrics   *metrics.Metrics
	guard     ContentGuard
	// access decides who may use which route; a nil *access.Policy lets
	// everyone in.
	access       access.Checker
	metricsLevel access.Level
	now          func() time.Time
	tagTTL       time.Duration
	platforms    []oci.Platform
	// fillReferrers: every fill also stores what refers to the image
	// (signatures, attestations, SBOMs).
	fillReferrers bool
	// perUpstream overrides tagTTL, platforms and referrers for some upstreams.
	perUpstream map[string]UpstreamSettings
	// fetches bounds the background fill's parallel upstream fetches.
	fetches     *semaphore.Weighted
	fillTimeout time.Duration
	// jobBeat is how often a running job's shared copy is rewritten.
	jobBeat time.Duration
	// maxBlobSize bounds one blob download (and its spool file), a size a
	// manifest declares included: a smaller declared size bounds it more.
	maxBlobSize int64
	// manifestTimeout bounds one upstream manifest request.
	manifestTimeout time.Duration
	// manifestsFromStore: a manifest to fetch is read back from a store
	// that holds manifests, if there, rather than asked of the upstream
	// (WithManifestsFromStore).
	manifestsFromStore bool
	// full says whether the store is full; readyFailWhenFull makes
	// /readyz fail meanwhile.
	full              fullness
	readyFailWhenFull bool
	// diskFree, if set, measures the store's disk (WithFreeSpace).
	diskFree func() (uint64, bool)
	// refusals are the store's refusals to store content (refused.go).
	refusals *writeRefusals
	// outages pace the logs of upstream failures requests got past.
	outages outageLogs

	tagFlights      singleflight.Group // per "host/repo:tag"
	manifestFlights singleflight.Group // per "host/repo@digest" and "host/repo:tag"
	// writes are the manifests answered and not yet recorded.
	writes manifestWrites
	// fetchingManifest, if set, is called when a fill or copy
	// (ensureManifest, copySource) found a manifest neither being written
	// nor held, just before it fetches it: tests hold it there.
	fetchingManifest func(ref oci.Ref)
	referrerFlights  singleflight.Group // per "host/repo@subject\x00artifactType"
	// readiness is the store's lookups for Ready (readiness.go).
	readiness *readiness
	// artifactChecks: when each recently revalidated image last had its
	// artifacts looked for again (recheckArtifacts), by fillKey.
	artifactChecks *lru.Cache[string, time.Time]
	// tagHeads: whether each upstream's HEAD of a tag tells the truth
	// when it answers 404 (tagHeadTrusted).
	tagHeads tagHeads
	// wholeBlobs: the stored blobs whose size was found to be their
	// record's (wholeBlob), and that size.
	wholeBlobs *lru.Cache[digest.Digest, int64]
	// unremoved: the stored blobs found unreadable or changed whose
	// removal the store does not allow (a registry destination without
	// deletes): read as missing (storedBlob, startBlob), so that their
	// pulls are answered from the upstream, not from the bad copy.
	unremoved *lru.Cache[digest.Digest, struct{}]
	// referrerTypes: the types of referrers read from the upstream and
	// not stored (typeOf), by digest: its manifest does not change.
	referrerTypes *lru.Cache[digest.Digest, referrerType]

	blobs *downloads
	fills *fillQueue
	// work counts everything that runs beyond its request.
	work *activity
	jobs jobs
	// maxJobImages bounds the images of one prefetch job.
	maxJobImages int
	// peers fetch the misses other replicas own; nil without a cluster.
	peers Peers
	// leases make one replica fetch a blob from the upstream while the
	// others wait for it in the shared store; nil without them.
	leases BlobLeases

	// traffic and failures are what the status page shows of the
	// proxy's work (status.go).
	traffic  *traffic
	failures *failureLog

	// fetchAhead starts every blob of an image manifest a client gets
	// (ahead.go); upstreamConns is the per-upstream budget of downloads
	// the mirror starts for itself, held in budgets; answerWait bounds
	// how long a manifest's answer waits for its blobs' requests.
	fetchAhead    bool
	upstreamConns int64
	budgets       *budgets
	answerWait    time.Duration

	// stop is closed by Close; it cancels every background fill.
	stop      chan struct{}
	closeOnce sync.Once

	// redirects sends clients to the store for stored blobs (S3).
	redirects redirects
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.log = l } }

// WithMetrics sets the metrics the proxy records and serves on /metrics
// (default: a fresh set).
func WithMetrics(m *metrics.Metrics) Option { return func(p *Proxy) { p.metrics = m } }

// WithAccess requires clients to authenticate as the policy says (an
// *access.Policy, or an *access.File that reloads one), and /metrics to be
// used at metricsLevel (default: no authentication).
func WithAccess(a access.Checker, metricsLevel access.Level) Option {
	return func(p *Proxy) {
		if a != nil {
			p.access, p.metricsLevel = a, metricsLevel
		}
	}
}

// ContentGuard lets the cache lifecycle and the proxy agree on content in
// use: the proxy holds a digest while it checks and opens it, and the
// collector does not remove it meanwhile (lifecycle.InUse).
type ContentGuard interface {
	Acquire(ctx context.Context, dgst digest.Digest) (release func(), err error)
}

// WithContentGuard sets the guard (default: none, nothing is collected).
func WithContentGuard(g ContentGuard) Option { return func(p *Proxy) { p.guard = g } }

// hold acquires dgst from the guard, if there is one.
func (p *Proxy) hold(ctx context.Context, dgst digest.Digest) (func(), error) {
	if p.guard == nil {
		return func() {}, nil
	}
	return p.guard.Acquire(ctx, dgst)
}

// WithClock sets the clock used for tag freshness (default time.Now).
func WithClock(now func() time.Time) Option { return func(p *Proxy) { p.now = now } }

// WithTagTTL sets how long a tag's digest is trusted before it is
// revalidated upstream (default 1m; 0 revalidates on every pull).
func WithTagTTL(d time.Duration) Option { return func(p *Proxy) { p.tagTTL = d } }

// WithPlatforms sets the platforms mirrored eagerly (default linux/*).
func WithPlatforms(ps []oci.Platform) Option { return func(p *Proxy) { p.platforms = ps } }

// UpstreamSettings override the proxy's settings for one upstream; nil
// fields keep them.
type UpstreamSettings struct {
	TagTTL    *time.Duration
	Platforms []oci.Platform
	Referrers *bool
}

// WithUpstreamSettings overrides the tag TTL and platforms of the upstream
// clients name host.
func WithUpstreamSettings(host string, s UpstreamSettings) Option {
	return func(p *Proxy) {
		if p.perUpstream == nil {
			p.perUpstream = map[string]UpstreamSettings{}
		}
		p.perUpstream[host] = s
	}
}

// ttlFor is the tag TTL of t's upstream.
func (p *Proxy) ttlFor(t target) time.Duration {
	if s, ok := p.perUpstream[t.host()]; ok && s.TagTTL != nil {
		return *s.TagTTL
	}
	return p.tagTTL
}

// platformsFor are the platforms mirrored eagerly from t's upstream.
func (p *Proxy) platformsFor(t target) []oci.Platform {
	if s, ok := p.perUpstream[t.host()]; ok && s.Platforms != nil {
		return s.Platforms
	}
	return p.platforms
}

// referrersFor reports whether fills from t's upstream also store the
// image's referrers and cosign's signature tags.
func (p *Proxy) referrersFor(t target) bool {
	if s, ok := p.perUpstream[t.host()]; ok && s.Referrers != nil {
		return *s.Referrers
	}
	return p.fillReferrers
}

// WithReferrers sets whether every fill (background, prefetch, sync,
// mirror) also stores what refers to the image: its referrers (the
// referrers API, or the sha256-<hex> fallback tag) and cosign's
// sha256-<hex>.sig, .att and .sbom tags, with their blobs (default true).
// The referrers API is served either way.
func WithReferrers(on bool) Option { return func(p *Proxy) { p.fillReferrers = on } }

// WithConcurrency sets the background fill's parallel upstream fetches
// (default 4).
func WithConcurrency(n int) Option {
	return func(p *Proxy) { p.fetches = semaphore.NewWeighted(int64(max(n, 1))) }
}

// WithSpoolDir sets where blob downloads are spooled while they stream
// (default os.TempDir()). Put it on local disk, e.g. under --data.
func WithSpoolDir(dir string) Option { return func(p *Proxy) { p.blobs.dir = dir } }

// WithFreeSpace gives the proxy free, which returns the free space of the
// disk the store (and the spool) fills, and whether it could tell
// (default: not measured). The store counts as full while it is under
// 64 MiB, and a write's finding no space on it (ENOSPC) is forgotten once
// it has grown by as much.
func WithFreeSpace(free func() (uint64, bool)) Option { return func(p *Proxy) { p.diskFree = free } }

// WithReadyzFailWhenFull makes /readyz fail while the store is full
// (default false: the mirror stays ready and serves what it holds; /readyz
// says the store is full either way).
func WithReadyzFailWhenFull(fail bool) Option { return func(p *Proxy) { p.readyFailWhenFull = fail } }

// WithFillTimeout ends an upstream fill (a blob download, an image's
// mirror, fetching ahead), which goes on after the client that started it
// hangs up, once it has made no progress for d (default 1h): a download
// whose bytes keep coming is not cut, however long it takes.
func WithFillTimeout(d time.Duration) Option { return func(p *Proxy) { p.fillTimeout = d } }

// WithJobBeat sets how often a running prefetch job's copy in a shared
// store is rewritten, progress or none (default storage.JobBeat): the
// other replicas read a job not rewritten for storage.JobLost as lost.
func WithJobBeat(d time.Duration) Option { return func(p *Proxy) { p.jobBeat = d } }

// DefaultPrefetchMaxImages is how many images a prefetch job may hold
// unless WithPrefetchMaxImages says otherwise.
const DefaultPrefetchMaxImages = 1000

// WithPrefetchMaxImages bounds the images of one prefetch job (default
// DefaultPrefetchMaxImages); a request for more is refused.
func WithPrefetchMaxImages(n int) Option { return func(p *Proxy) { p.maxJobImages = max(n, 1) } }

// WithMaxBlobSize sets the largest blob downloaded (default
// DefaultMaxBlobSize): an upstream that says or sends more is cut off and
// nothing is kept. A layer a manifest lists is also held to the size the
// manifest declares.
func WithMaxBlobSize(n int64) Option { return func(p *Proxy) { p.maxBlobSize = n } }

// WithManifestsFromStore has a manifest the index does not hold read back
// from the store by digest, if the store holds manifests (a registry
// destination) and has it, before the upstream is asked; a tag's digest
// is asked with a HEAD. For the mirror command, whose index is thrown
// away after each run: a run again costs the upstream no manifest GET,
// which Docker Hub counts as a pull.
func WithManifestsFromStore() Option { return func(p *Proxy) { p.manifestsFromStore = true } }

// New returns a proxy serving from store and index, filling from the given
// upstreams, keyed by the host clients name them with. docker.io must be
// among them.
func New(store storage.Store, index *storage.Index, upstreams []*upstream.Client, opts ...Option) (*Proxy, error) {
	artifactChecks, err := lru.New[string, time.Time](maxArtifactChecks)
	if err != nil {
		return nil, err
	}
	refused, err := lru.New[string, writeRefusal](maxWriteRefusals)
	if err != nil {
		return nil, err
	}
	refusedManifests, err := lru.New[string, writeRefusal](maxWriteRefusals)
	if err != nil {
		return nil, err
	}
	wholeBlobs, err := lru.New[digest.Digest, int64](maxWholeBlobs)
	if err != nil {
		return nil, err
	}
	unremoved, err := lru.New[digest.Digest, struct{}](maxWholeBlobs)
	if err != nil {
		return nil, err
	}
	referrerTypes, err := lru.New[digest.Digest, referrerType](maxReferrerTypes)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		store:           store,
		index:           index,
		refusals:        &writeRefusals{byRepo: refused, byManifest: refusedManifests},
		access:          (*access.Policy)(nil), // everyone in, until WithAccess
		upstreams:       map[string]*upstream.Client{},
		log:             slog.Default(),
		now:             time.Now,
		tagTTL:          time.Minute,
		platforms:       []oci.Platform{{OS: "linux", Architecture: "*"}},
		fillReferrers:   true,
		fetches:         semaphore.NewWeighted(4),
		fillTimeout:     time.Hour,
		jobBeat:         storage.JobBeat,
		maxBlobSize:     DefaultMaxBlobSize,
		manifestTimeout: time.Minute,
		blobs:           newDownloads(),
		fills:           newFillQueue(),
		work:            newActivity(),
		stop:            make(chan struct{}),
		jobs:            jobs{live: map[string]*storage.Job{}},
		maxJobImages:    DefaultPrefetchMaxImages,
		redirects:       newRedirects(),
		artifactChecks:  artifactChecks,
		wholeBlobs:      wholeBlobs,
		unremoved:       unremoved,
		referrerTypes:   referrerTypes,
		fetchAhead:      true,
		upstreamConns:   DefaultUpstreamConnections,
		answerWait:      maxAnswerWait,
	}
	for _, u := range upstreams {
		p.upstreams[u.Host()] = u
		host := u.Host()
		u.HoldsRepositories(func(except []string) (string, bool) {
			repo, ok, err := index.HeldRepository(host, except...)
			return repo, ok && err == nil
		})
	}
	if _, ok := p.upstreams[DefaultHost]; !ok {
		return nil, errors.New("proxy: no upstream for docker.io")
	}
	for _, o := range opts {
		o(p)
	}
	if p.metrics == nil {
		p.metrics = metrics.New()
	}
	p.traffic, p.failures = newTraffic(p.now(), p.bytesFetched), &failureLog{}
	p.budgets = &budgets{size: p.upstreamConns}
	p.readiness = &readiness{lookUp: p.statReadiness, ping: index.Ping, now: p.now, work: p.work}
	p.metrics.Register(
		p.redirects.count,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_mirror_queue_length", Help: "Background mirror jobs queued or running.",
		}, func() float64 { return float64(p.fills.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_store_size_bytes", Help: "Total size of the stored blobs and manifests.",
		}, func() float64 { return float64(p.index.StoredBytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_store_refuses_writes", Help: "1 while the store is believed to refuse writes: it refused one (a read-only registry destination, a quota used up, credentials that may not push) within the last minute, and none has succeeded since; misses are served without being stored.",
		}, func() float64 {
			if p.WritesRefused() != nil {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_store_full", Help: "1 while the store is full: the last write found no space (ENOSPC, EDQUOT) and none has succeeded or been freed since, or the store's disk has less than 64 MiB free.",
		}, func() float64 {
			if p.StoreFull() {
				return 1
			}
			return 0
		}),
	)
	return p, nil
}

// Close cancels background work and waits for it to stop. It does not
// close the store or the index.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		close(p.stop)
		p.work.close()
	})
	_ = p.work.wait(context.Background())
}

// closing reports whether Close has been called.
func (p *Proxy) closing() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// detach returns a context for work that must outlive the request that
// started it (a fill that other clients share, background fill): it
// keeps ctx's values, is not cancelled with it, and ends on Close or after
// timeout (0: none).
func (p *Proxy) detach(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	// Work that outlives a request another replica forwarded is this
	// replica's own: its misses go to their owners.
	ctx = context.WithoutCancel(context.WithValue(ctx, forwardedKey{}, false))
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// progressKey is the context key of the idleClock of a detachIdle
// context.
type progressKey struct{}

// errNoProgress ends work detached by detachIdle that did not progress.
var errNoProgress = errors.New("no progress within the fill timeout")

// idleClock ends the work of a detachIdle context once it has not
// progressed for its timeout; the work that detached it (outer) progresses
// with it.
type idleClock struct {
	done    <-chan struct{} // the context's
	timeout time.Duration
	timer   *time.Timer
	outer   *idleClock
	mu      sync.Mutex
	paused  int
}

// progressed restarts the clock and those of the work outside it.
func (c *idleClock) progressed() {
	for ; c != nil; c = c.outer {
		c.mu.Lock()
		if c.paused == 0 && !c.ended() {
			c.timer.Reset(c.timeout)
		}
		c.mu.Unlock()
	}
}

// ended reports whether its context has ended: its timer is not armed
// again.
func (c *idleClock) ended() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// pause stops the clock and those of the work outside it until resume
// is called: the work waits its turn (a download queued for its
// upstream's budget), which is not idleness.
func (c *idleClock) pause() (resume func()) {
	for o := c; o != nil; o = o.outer {
		o.mu.Lock()
		o.paused++
		o.timer.Stop()
		o.mu.Unlock()
	}
	return sync.OnceFunc(func() {
		for o := c; o != nil; o = o.outer {
			o.mu.Lock()
			if o.paused--; o.paused == 0 && !o.ended() {
				o.timer.Reset(o.timeout)
			}
			o.mu.Unlock()
		}
	})
}

// detachIdle is detach for work that may take long while it moves (a fill,
// a blob download): it ends after timeout without progress (progressed),
// not after timeout in all, so that a large layer over a slow link
// arrives as long as its bytes keep coming. Progress of work detached from
// it counts as its own.
func (p *Proxy) detachIdle(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	outer := clockOf(ctx)
	ctx, cancelDetached := p.detach(ctx, 0)
	ctx, cancel := context.WithCancelCause(ctx)
	c := &idleClock{done: ctx.Done(), timeout: timeout, outer: outer}
	c.timer = time.AfterFunc(timeout, func() { cancel(errNoProgress) })
	return context.WithValue(ctx, progressKey{}, c), func() {
		c.timer.Stop()
		cancel(context.Canceled)
		cancelDetached()
	}
}

// progressed tells the work ctx was detached for by detachIdle, and the
// work that detached it, that it progressed.
func progressed(ctx context.Context) {
	if c := clockOf(ctx); c != nil {
		c.progressed()
	}
}

// pauseIdle pauses ctx's idleClock, if it has one (idleClock.pause).
func pauseIdle(ctx context.Context) (resume func()) {
	if c := clockOf(ctx); c != nil {
		return c.pause()
	}
	return func() {}
}

// stalled is err, of work on ctx, saying why ctx ended if that was for
// no progress (detachIdle): "context canceled" alone reads as a client
// hanging up.
func stalled(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errNoProgress) && !errors.Is(err, errNoProgress) {
		return fmt.Errorf("%w: %w", err, errNoProgress)
	}
	return err
}

// clockOf returns the idleClock of a detachIdle context, or nil.
func clockOf(ctx context.Context) *idleClock {
	c, _ := ctx.Value(progressKey{}).(*idleClock)
	return c
}

// shared runs fn once for all concurrent callers with the same key, and
// returns its result to each caller, or the caller's own ctx error if that
// ends first: a client hanging up leaves the others (and the fill) alone.
// The fetch is counted in work, so Close waits for it.
func shared[T any](ctx context.Context, work *activity, g *singleflight.Group, key string, fn func() (T, error)) (T, error) {
	if !work.start() {
		var zero T
		return zero, errClosing
	}
	ch := g.DoChan(key, func() (any, error) { return fn() })
	res := make(chan singleflight.Result, 1)
	go func() {
		r := <-ch // the flight is over, whether or not the caller still waits
		work.done()
		res <- r
	}()
	select {
	case r := <-res:
		v, _ := r.Val.(T)
		return v, r.Err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// countFill counts an upstream fill of kind ("manifest", "blob") in the
// metrics; call the returned func with the fill's error when it ends.
// What the upstream does not have (a client's typo) is "not_found", not
// an "error" of the upstream or the mirror, which alerts watch; but for
// what a manifest of the upstream lists (listed): lacking it, the
// upstream fails every pull of that image, an "error".
func (p *Proxy) countFill(kind string, listed bool) func(error) {
	start := time.Now()
	p.metrics.FillsInProgress.WithLabelValues(kind).Inc()
	return func(err error) {
		p.metrics.FillsInProgress.WithLabelValues(kind).Dec()
		result := "ok"
		switch {
		case errors.Is(err, upstream.ErrNotFound) && !listed && !pingNotFound(err):
			result = "not_found"
		case err != nil:
			result = "error"
		}
		p.metrics.FillDuration.WithLabelValues(kind, result).Observe(time.Since(start).Seconds())
	}
}

// WaitIdle blocks until no download, upstream fetch or background
// mirroring is running, or ctx ends. Tests and the one-shot commands use it.
func (p *Proxy) WaitIdle(ctx context.Context) error { return p.work.wait(ctx) }

// ResumeFills restarts the background fill of every index whose
// mirroring did not finish, e.g. because the process was stopped. Its
// read of the index is the start-up's one full read (ScanAtStart: the
// index's memos of complete fills and of links are read in the same
// pass).
func (p *Proxy) ResumeFills(ctx context.Context) error {
	pending, err := p.index.ScanAtStart(ctx)
	if err != nil {
		return err
	}
	for _, e := range pending {
		up, ok := p.upstreams[e.Upstream]
		if !ok {
			p.log.Warn("not resuming the fill of an unconfigured upstream", "upstream", e.Upstream, "repo", e.Repo, "digest", e.Digest)
			continue
		}
		p.enqueueFill(ctx, target{up: up, repo: e.Repo, name: e.Repo}, e.Digest)
	}
	if len(pending) > 0 {
		p.log.Info("resuming interrupted fills", "count", len(pending))
	}
	return nil
}
