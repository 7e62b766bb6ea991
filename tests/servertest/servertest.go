// Package servertest runs docker-mirror in-process for tests and benchmarks:
// the production wiring (package server) on 127.0.0.1 with the filesystem
// store and bbolt index in a temporary directory, restartable on the same
// data.
package servertest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Clock is a settable clock for tag-TTL tests.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock set to the current time (so that it agrees
// with file modification times), which then moves only when advanced.
func NewClock() *Clock { return &Clock{t: time.Now()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Upstream is an upstream of a test mirror.
type Upstream struct {
	Host string // as clients name it, e.g. docker.io or ghcr.io
	URL  string
	Auth authn.Authenticator // nil: anonymous
	// Timeout bounds the wait for the upstream's answers (0: the default).
	Timeout time.Duration
	// AllowHosts are the private addresses besides its own the upstream's
	// connections may reach (config's allow_hosts), e.g. a blob CDN.
	AllowHosts []string
	// TagTTL, if set, is the upstream's own tag_ttl, overriding the global one.
	TagTTL *time.Duration
}

// Server is a running docker-mirror.
type Server struct {
	tb        testing.TB
	upstreams []Upstream
	dir       string
	opts      []proxy.Option
	newStore  func(*storage.Index) (storage.Store, error)
	// configure, if not nil, changes the configuration before each start.
	configure func(*config.Config)
	Clock     *Clock

	// Server is the whole server; Proxy, Metrics, Index and Store its parts.
	Server  *server.Server
	Proxy   *proxy.Proxy
	Metrics *metrics.Metrics
	Index   *storage.Index
	Store   storage.Store
	http    *httptest.Server
	cancel  context.CancelFunc
	// handling counts the requests the handler is running (WaitRequests).
	handling handling
}

// handling counts the requests a handler is running. A client has its
// whole answer before the handler returns, and the handler's account of
// the request (its metrics, its log line) comes after: a test reads those
// once the count is back to none.
type handling struct {
	mu sync.Mutex
	n  int
	// idle is closed when n falls to 0 (nil: none running yet).
	idle chan struct{}
}

// wrap counts h's requests.
func (c *handling) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		if c.n == 0 {
			c.idle = make(chan struct{})
		}
		c.n++
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			if c.n--; c.n == 0 {
				close(c.idle)
			}
			c.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// done returns a channel closed once no request is running.
func (c *handling) done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return c.idle
}

// Start runs a mirror of upstreamURL (as docker.io) with the given options
// on top of the test defaults (fake clock, quiet logger, spool in the data
// directory). It is shut down with t.Cleanup.
func Start(t testing.TB, upstreamURL string, opts ...proxy.Option) *Server {
	return StartWithStore(t, upstreamURL, nil, opts...)
}

// StartWithStore is Start with the store newStore returns (e.g. a
// destination registry) instead of the embedded filesystem store; it is
// called again on Restart.
func StartWithStore(t testing.TB, upstreamURL string, newStore func(*storage.Index) (storage.Store, error), opts ...proxy.Option) *Server {
	return StartUpstreams(t, []Upstream{{Host: proxy.DefaultHost, URL: upstreamURL}}, newStore, opts...)
}

// StartUpstreams runs a mirror of several upstreams (docker.io among
// them), on the store newStore returns (nil: the embedded store).
func StartUpstreams(t testing.TB, ups []Upstream, newStore func(*storage.Index) (storage.Store, error), opts ...proxy.Option) *Server {
	t.Helper()
	m := &Server{tb: t, upstreams: ups, dir: t.TempDir(), opts: opts, newStore: newStore, Clock: NewClock()}
	m.start()
	t.Cleanup(m.Stop)
	return m
}

// Logger is the logger test mirrors use: warnings and errors only.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Config is the configuration a test mirror of ups runs with: the
// defaults, data in dir, and each upstream with its credentials.
func Config(tb testing.TB, dir string, ups []Upstream) config.Config {
	cfg := config.Default()
	cfg.Data = dir
	cfg.Upstreams = map[string]config.Upstream{}
	for _, u := range ups {
		cu := config.Upstream{URL: u.URL, AllowHosts: u.AllowHosts}
		if u.Auth != nil {
			a, err := u.Auth.Authorization()
			if err != nil {
				tb.Fatal(err)
			}
			cu.Username, cu.Password = a.Username, a.Password
		}
		if u.Host == proxy.DefaultHost {
			cfg.Upstream = u.URL
		}
		if u.TagTTL != nil {
			d := config.Duration(*u.TagTTL)
			cu.TagTTL = &d
		}
		if u.Timeout > 0 {
			cfg.UpstreamTimeout = config.Duration(u.Timeout)
		}
		cfg.Upstreams[u.Host] = cu
	}
	return cfg
}

func (m *Server) start() {
	t := m.tb
	ctx, cancel := context.WithCancel(context.Background())
	opts := []server.Option{server.WithClock(m.Clock.Now), server.WithLogger(Logger()), server.WithProxyOptions(m.opts...)}
	if m.newStore != nil {
		opts = append(opts, server.WithStore(func(_ context.Context, _ config.Config, ix *storage.Index) (storage.Store, string, error) {
			s, err := m.newStore(ix)
			return s, "test store", err
		}))
	}
	cfg := Config(t, m.dir, m.upstreams)
	if m.configure != nil {
		m.configure(&cfg)
	}
	srv, err := server.New(ctx, cfg, opts...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	m.Server, m.cancel = srv, cancel
	m.Proxy, m.Metrics, m.Index, m.Store = srv.Proxy, srv.Metrics, srv.Index, srv.Store
	m.http = httptest.NewServer(m.handling.wrap(srv.Handler()))
}

// Host is the mirror's "127.0.0.1:PORT".
func (m *Server) Host() string { return m.http.Listener.Addr().String() }

// Dir is the mirror's data directory.
func (m *Server) Dir() string { return m.dir }

// URL is the mirror's "http://127.0.0.1:PORT".
func (m *Server) URL() string { return m.http.URL }

// WaitIdle waits for background fill to finish.
func (m *Server) WaitIdle() {
	m.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Proxy.WaitIdle(ctx); err != nil {
		m.tb.Fatalf("background fill did not finish: %v", err)
	}
}

// WaitRequests waits until no request to the mirror is being handled,
// e.g. before its metrics are read: a client's last answer is complete
// before its handler has counted it.
func (m *Server) WaitRequests() {
	m.tb.Helper()
	select {
	case <-m.handling.done():
	case <-time.After(2 * time.Minute):
		m.tb.Fatal("requests to the mirror were still being handled after 2 minutes")
	}
}

// Stop shuts the mirror down; it may be called more than once.
func (m *Server) Stop() {
	if m.http == nil {
		return
	}
	m.http.CloseClientConnections()
	m.http.Close()
	m.cancel()
	if err := m.Server.Close(); err != nil {
		m.tb.Error(err)
	}
	m.http = nil
}

// Restart stops the mirror and starts a new one on the same data
// directory (on a new port).
func (m *Server) Restart() {
	m.Stop()
	m.start()
}

// StartConfigured runs a mirror of ups (docker.io among them) on the
// embedded store with its configuration changed by configure (e.g. the
// storage block of a shared S3 bucket); configure runs again on Restart.
func StartConfigured(t testing.TB, ups []Upstream, configure func(*config.Config), opts ...proxy.Option) *Server {
	t.Helper()
	m := &Server{tb: t, upstreams: ups, dir: t.TempDir(), opts: opts, configure: configure, Clock: NewClock()}
	m.start()
	t.Cleanup(m.Stop)
	return m
}
