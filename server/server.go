// Package server turns a config.Config into a running docker-mirror: the
// index, the store (embedded or a destination registry), the upstream
// clients behind the dial guard, the proxy, the cache lifecycle and the
// HTTP server. It is the one place the parts are wired, used by every
// command, the test harness and the benchmarks alike.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/docker-mirror/docker-mirror/cluster"
	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	statuspage "github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/opencontainers/go-digest"
)

// Server is docker-mirror assembled from a configuration. Create it with
// New, Start its background work, serve Handler (or run Serve), and Close
// it.
type Server struct {
	cfg  config.Config
	opts options

	// Index, Store, Proxy and Metrics are the parts, for the commands and
	// tests that use them directly.
	Index   *storage.Index
	Store   storage.Store
	Proxy   *proxy.Proxy
	Metrics *metrics.Metrics
	// Collector runs the cache lifecycle; nil with a destination registry,
	// which collects its own garbage.
	Collector *lifecycle.Collector
	// Status is the status page and its JSON API.
	Status *statuspage.Handler
	// storeName says which store, for the start-up line.
	storeName string
	// certs serves the TLS certificate, if there is one: loaded by New,
	// so that a pair that cannot serve fails the start before listening.
	certs *certReloader
	// auth is the htpasswd file's policy, reloaded on SIGHUP and when the
	// file changes; nil without auth.
	auth *access.File
	// Cluster is this replica's view of the replicas sharing its store;
	// nil without cluster.self.
	Cluster *cluster.Cluster
	// background counts the goroutines Start and Serve began.
	background sync.WaitGroup
	// scanned is closed once Start's full read of the index has ended.
	scanned chan struct{}
	// damaged receives the error of a background read that found the
	// index damaged (storage.ErrDamaged): Serve stops with it.
	damaged chan error
	// stopTagReads ends what watchPasses began (Close).
	stopTagReads context.CancelFunc
}

// StoreOpener opens the store of a server on its index; the name says
// which store it is, for the log.
type StoreOpener func(ctx context.Context, cfg config.Config, index *storage.Index) (store storage.Store, name string, err error)

type options struct {
	log          *slog.Logger
	now          func() time.Time
	lookupEnv    func(string) (string, bool)
	openStore    StoreOpener
	proxyOptions []proxy.Option
	version      string
	// clusterOptions are added to the cluster's (WithClusterOptions).
	clusterOptions []cluster.Option
	// leaseObjects and leaseOptions replace the cluster's blob fetch
	// leases' store and add to their options (WithLeaseObjects).
	leaseObjects lease.Objects
	leaseOptions []lease.Option
	// gcHold lowers the GC percent while the lifecycle's passes run
	// (WithGCHold).
	gcHold *gchold.Hold
}

// Option configures New.
type Option func(*options)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock of tag freshness and the lifecycle (default
// time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithEnv sets how environment variables are read: the upstreams'
// password_env and the HTTP proxy (default os.LookupEnv).
func WithEnv(lookup func(string) (string, bool)) Option {
	return func(o *options) { o.lookupEnv = lookup }
}

// WithStore replaces the store the configuration names (default
// OpenStore).
func WithStore(open StoreOpener) Option { return func(o *options) { o.openStore = open } }

// WithProxyOptions adds proxy options after the configuration's, so they
// win (tests use it for what the configuration cannot say).
func WithProxyOptions(opts ...proxy.Option) Option {
	return func(o *options) { o.proxyOptions = append(o.proxyOptions, opts...) }
}

// WithGCHold hands the lifecycle the process's GC hold (serve makes it
// from pass_gc_percent): its passes lower the GC percent while they run.
// Default none: a server in a test or a benchmark leaves the process's
// percent alone.
func WithGCHold(h *gchold.Hold) Option { return func(o *options) { o.gcHold = h } }

// WithVersion sets the version the start-up line names.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// IndexPath is where the index of a data directory lives.
func IndexPath(cfg config.Config) string { return filepath.Join(cfg.Data, "index.db") }

// New loads the TLS pair, opens the index and the store of cfg and wires
// the upstreams, the proxy and the lifecycle around them: everything that
// can make a start fail fails here, before anything listens. Nothing runs
// until Start.
func New(ctx context.Context, cfg config.Config, opts ...Option) (_ *Server, err error) {
	o := options{log: slog.Default(), now: time.Now, lookupEnv: os.LookupEnv, openStore: OpenStore}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{cfg: cfg, opts: o, scanned: make(chan struct{}), damaged: make(chan error, 1)}
	if cfg.TLSCert != "" {
		if s.certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey, o.log); err != nil {
			return nil, err
		}
	}
	warnReadableSecrets(cfg, o.log)
	if cfg.Auth.Htpasswd != "" {
		if s.auth, err = access.LoadFile(cfg.Auth.Htpasswd, cfg.Auth.Admins, cfg.Auth.AnonymousPull, access.WithLogger(o.log)); err != nil {
			return nil, err
		}
	}
	lost := indexLost(cfg) // before claimData, which marks a new directory
	legacy, err := claimData(cfg)
	if err != nil {
		return nil, err
	}
	if s.Index, err = storage.OpenIndex(IndexPath(cfg)); err != nil {
		return nil, err
	}
	s.Index.SetLogger(o.log)
	if lost {
		o.log.Warn("the data directory's index was missing or empty: started with a new, empty one; what the store holds is unknown to it and is fetched again as it is pulled (to keep it, stop the mirror and restore index.db from a backup)",
			"index", IndexPath(cfg))
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if legacy {
		if err := migrateSpool(cfg); err != nil {
			return nil, err
		}
	}
	if err := cleanSpool(cfg); err != nil {
		return nil, err
	}
	if s.Store, s.storeName, err = o.openStore(ctx, cfg, s.Index); err != nil {
		return nil, err
	}
	if err := s.recordStore(); err != nil {
		return nil, err
	}
	if err := shareRecords(ctx, cfg, s.Index, s.Store, o.now); err != nil {
		return nil, err
	}
	if legacy {
		if ds, ok := s.Store.(*storage.DriverStore); ok {
			if err := ds.CleanLegacyUploads(ctx); err != nil {
				return nil, fmt.Errorf("storage: removing interrupted uploads of an older version: %w", err)
			}
		}
		// Migrated: from now on the marker says the directory is ours.
		if err := writeMarker(cfg); err != nil {
			return nil, err
		}
	}
	s.Metrics = metrics.New()
	lm := lifecycle.NewMetrics()
	s.Metrics.Register(lm.Collectors()...)
	inUse := lifecycle.NewInUse()
	popts, err := proxyOptions(cfg, s.Metrics, s.auth)
	if err != nil {
		return nil, err
	}
	ups, err := Upstreams(cfg, s.Metrics, o.lookupEnv)
	if err != nil {
		return nil, err
	}
	var copts []proxy.Option
	if s.Cluster, copts, err = newCluster(cfg, o, s.Metrics, s.auth, s.certs); err != nil {
		return nil, err
	}
	popts = append(popts, copts...)
	if s.Cluster != nil {
		popts = append(popts, newLeases(ctx, cfg, o, s.Metrics, s.Cluster)...)
	}
	popts = append(popts,
		proxy.WithLogger(o.log),
		proxy.WithClock(o.now),
		proxy.WithSpoolDir(SpoolPath(cfg)),
		proxy.WithContentGuard(inUse))
	if s.Proxy, err = proxy.New(s.Store, s.Index, ups, append(popts, o.proxyOptions...)...); err != nil {
		return nil, err
	}
	if cfg.Sync.Interval > 0 {
		if err := s.Proxy.CheckSync(syncOf(cfg)); err != nil {
			return nil, fmt.Errorf("sync.images: %w", err)
		}
	}
	s.Metrics.Register(gauges(cfg, s.Proxy, s.Index)...)
	grace := lifecycle.DefaultGrace
	if s.Index.Shared() {
		grace = lifecycle.SharedGrace
	}
	lo := lifecycle.Options{Grace: grace, Guard: inUse, Log: o.log, Metrics: lm, Now: o.now, GCHold: o.gcHold}
	if s.Cluster != nil {
		// Replicas share the store: each digest is collected by its owner.
		lo.Owned = func(d digest.Digest) bool { return s.Cluster.Owns(d.String()) }
	}
	s.Collector, err = lifecycle.NewForStore(s.Store, s.Index, lo)
	if errors.Is(err, lifecycle.ErrRegistryDestination) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	s.Status = newStatus(s)
	return s, nil
}

// Handler is the HTTP handler of the registry API, prefetch, health,
// metrics and the status page; in a cluster, misses go to their owners.
func (s *Server) Handler() http.Handler {
	h := s.Proxy.Handler(s.Status.Routes)
	if s.Cluster != nil {
		return s.Cluster.Handler(h)
	}
	return h
}

// Start resumes the fills and prefetch jobs an earlier run left unfinished
// and starts the configured sync; all stop when ctx ends. The fills are
// resumed in the background: finding them reads every mirror record,
// with every link and tag for the index's memos of them (~1 s at 100k
// images), which no request waits for (Scanned tells its end); a pull of
// an image meanwhile starts its fill itself, and the resume's is then the
// same one (fills are one per image).
func (s *Server) Start(ctx context.Context) error {
	// One full read of the index (the fill records, the links and the
	// tags, for the fills to resume and the memos that answer hits:
	// storage.Index.ScanAtStart).
	if !s.Index.Shared() {
		s.watchPasses(ctx, s.opts.gcHold, s.Index)
	}
	s.background.Go(func() {
		defer close(s.scanned)
		err := s.Proxy.ResumeFills(ctx)
		switch {
		case errors.Is(err, storage.ErrDamaged):
			// A page the open does not read: the start is refused
			// all the same, only later (Serve).
			s.failDamaged(err)
		case err != nil && ctx.Err() == nil:
			s.opts.log.Error("resuming interrupted fills; they resume on the next pull or restart", "error", err)
		}
	})
	if err := s.Proxy.ResumeJobs(ctx); err != nil {
		return err
	}
	s.runCluster(ctx)
	if s.cfg.Sync.Interval > 0 {
		s.background.Go(func() { s.Proxy.RunSync(ctx, syncOf(s.cfg), time.Duration(s.cfg.Sync.Interval)) })
	}
	return nil
}

// failDamaged stops Serve with err, an index found damaged in the
// background: serving on, each read of the page would fail, and a pass
// of the lifecycle reading it would end the process.
func (s *Server) failDamaged(err error) {
	select {
	case s.damaged <- err:
	default: // one is enough
	}
}

// syncOf is the configured sync.
func syncOf(cfg config.Config) proxy.Sync {
	return proxy.Sync{Images: cfg.Sync.Images, Platforms: cfg.Sync.Platforms, Pin: cfg.Sync.Pin}
}

// watchPasses frees the index's tag memo while the lifecycle's passes run
// (a collection, an eviction, an image list: their heap is the process's
// peak; storage.Index.ReleaseTags, which keeps any read from filling it
// again until ResumeTags), and reads it again once the last has ended,
// after handing their heap back to the system (debug.FreeOSMemory: the
// read would otherwise come on top of it). Hits look their tags up in
// the index meanwhile, as they did before the memo. Without a GC hold
// (pass_gc_percent 0) the memo stays through the passes.
func (s *Server) watchPasses(ctx context.Context, h *gchold.Hold, tags tagMemory) {
	if h == nil {
		return
	}
	ctx, s.stopTagReads = context.WithCancel(ctx)
	idle := make(chan struct{}, 1)
	h.Watch(tags.ReleaseTags, func() {
		tags.ResumeTags()
		select {
		case idle <- struct{}{}:
		default: // a read is due already
		}
	})
	s.background.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-idle:
			}
			debug.FreeOSMemory()
			err := tags.RememberTags(ctx)
			if errors.Is(err, storage.ErrDamaged) {
				s.failDamaged(err)
				return
			}
			if err != nil && ctx.Err() == nil {
				s.opts.log.Warn("reading the tags for the index's memo after a pass; hits look them up meanwhile", "error", err)
			}
		}
	})
}

// tagMemory is the index's tag memo as watchPasses frees and reads it.
type tagMemory interface {
	ReleaseTags()
	ResumeTags()
	RememberTags(ctx context.Context) error
}

// Scanned is closed once the full read of the index Start began has
// ended (or failed): hits are answered from the index's memos from then
// on (benchmarks wait for it).
func (s *Server) Scanned() <-chan struct{} { return s.scanned }

// Serve starts the server's background work and the cache lifecycle, and
// answers on ln until ctx ends, then shuts down gracefully within the
// configured timeout; it shuts down too, and returns the error, when a
// read in the background finds the index damaged (storage.ErrDamaged).
// A value on hup (SIGHUP) reloads the TLS certificate and the htpasswd
// file; the htpasswd file is also reloaded when it changes.
func (s *Server) Serve(ctx context.Context, ln net.Listener, hup <-chan os.Signal) error {
	defer ln.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		return err
	}
	if s.Collector != nil {
		t := time.NewTicker(time.Minute)
		s.background.Go(func() {
			defer t.Stop()
			s.runLifecycle(ctx, t.C)
		})
	}
	cfg, log := s.cfg, s.opts.log
	srv := &http.Server{
		Handler: s.Handler(),
		// Slow or oversized clients cannot hold the server: headers within
		// --header-timeout and 64 KiB, request bodies (only POST /prefetch
		// has one) within a minute. No write timeout: a blob may take long.
		ReadHeaderTimeout: time.Duration(cfg.HeaderTimeout),
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          httpErrorLog(log),
	}
	certs := s.certs
	if certs != nil {
		srv.TLSConfig = &tls.Config{GetCertificate: certs.getCertificate, MinVersion: tls.VersionTLS12}
	}
	log.Info("docker-mirror serving", "listen", ln.Addr().String(), "tls", certs != nil, "data", cfg.Data, "store", s.storeName,
		"upstreams", upstreamURLs(cfg), "tag_ttl", cfg.TagTTL.String(), "platforms", cfg.Platforms,
		"max_size", cfg.MaxSize.String(), "evict_after", cfg.EvictAfter.String(),
		"auth", cfg.Auth.Htpasswd != "", "version", s.opts.version)

	errc := make(chan error, 1)
	go func() {
		if certs != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	flush := time.NewTicker(30 * time.Second)
	defer flush.Stop()
	var authTicks <-chan time.Time // nil without auth: never
	if s.auth != nil {
		t := time.NewTicker(authCheckEvery)
		defer t.Stop()
		authTicks = t.C
	}
	var failed error // the index found damaged
	for {
		select {
		case err := <-errc:
			return err
		case err := <-s.damaged:
			failed = err
			cancel() // shut down as at ctx's end, and end with err
		case <-hup:
			if certs != nil {
				if err := certs.reload(); err != nil {
					log.Error("reloading the TLS certificate; keeping the current one", "error", err)
				} else {
					log.Info("reloaded the TLS certificate", "cert", cfg.TLSCert)
				}
			}
			s.reloadAuth()
		case <-authTicks:
			s.checkAuthFile()
		case <-flush.C:
			if err := s.Index.Flush(); err != nil {
				log.Warn("writing access times", "error", err)
			}
		case <-ctx.Done():
			log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
			sctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownTimeout))
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return errors.Join(failed, err)
			}
			return failed
		}
	}
}

// upstreamURLs lists the upstreams as HOST=URL, sorted, for the start-up
// line. Validate refuses URLs with credentials, so they hold none.
func upstreamURLs(cfg config.Config) []string {
	ups := cfg.AllUpstreams()
	out := make([]string, 0, len(ups))
	for _, host := range slices.Sorted(maps.Keys(ups)) {
		out = append(out, host+"="+ups[host].URL)
	}
	return out
}

// Close stops the proxy's background work, waits for what Start and
// Serve began (their context must have ended), and closes the index.
func (s *Server) Close() error {
	if s.Status != nil {
		s.Status.Close()
	}
	if s.Proxy != nil {
		s.Proxy.Close()
	}
	if s.stopTagReads != nil {
		s.stopTagReads()
	}
	s.background.Wait()
	if s.Index == nil {
		return nil
	}
	return s.Index.Close()
}

// runLifecycle runs the cache lifecycle until ctx ends: a pass on every
// tick (every minute: eviction by --max-size and --evict-after, and the
// collection of what it freed; a full collection every
// lifecycle.DefaultCollectEvery), and one as soon as a write takes the
// store past --max-size (wakes coalesce: one pending at most).
func (s *Server) runLifecycle(ctx context.Context, ticks <-chan time.Time) {
	policy := lifecycle.Policy{MaxSize: int64(s.cfg.MaxSize), EvictAfter: time.Duration(s.cfg.EvictAfter),
		CollectEvery: lifecycle.DefaultCollectEvery}
	wake := make(chan struct{}, 1)
	if policy.MaxSize > 0 {
		s.Index.OnGrow(func(stored int64) {
			if stored > policy.MaxSize {
				select {
				case wake <- struct{}{}:
				default: // one is pending already
				}
			}
		})
		defer s.Index.OnGrow(nil)
	}
	if err := s.Collector.Run(ctx, ticks, wake, policy); err != nil {
		s.failDamaged(err)
	}
}
