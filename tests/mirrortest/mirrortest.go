// Package mirrortest runs docker-mirror in-process for tests and benchmarks:
// a real proxy on 127.0.0.1 with the filesystem store and bbolt index in a
// temporary directory, restartable on the same data.
package mirrortest

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
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
}

// Mirror is a running docker-mirror.
type Mirror struct {
	tb        testing.TB
	upstreams []Upstream
	dir       string
	opts      []proxy.Option
	newStore  func(*storage.Index) (storage.Store, error)
	Clock     *Clock

	Proxy   *proxy.Proxy
	Metrics *metrics.Metrics
	Index   *storage.Index
	Store   storage.Store
	server  *httptest.Server
}

// Start runs a mirror of upstreamURL (as docker.io) with the given options
// on top of the test defaults (fake clock, quiet logger, spool in the data
// directory). It is shut down with t.Cleanup.
func Start(t testing.TB, upstreamURL string, opts ...proxy.Option) *Mirror {
	return StartWithStore(t, upstreamURL, nil, opts...)
}

// StartWithStore is Start with the store newStore returns (e.g. a
// destination registry) instead of the embedded filesystem store; it is
// called again on Restart.
func StartWithStore(t testing.TB, upstreamURL string, newStore func(*storage.Index) (storage.Store, error), opts ...proxy.Option) *Mirror {
	return StartUpstreams(t, []Upstream{{Host: proxy.DefaultHost, URL: upstreamURL}}, newStore, opts...)
}

// StartUpstreams runs a mirror of several upstreams (docker.io among
// them), on the store newStore returns (nil: the embedded store).
func StartUpstreams(t testing.TB, ups []Upstream, newStore func(*storage.Index) (storage.Store, error), opts ...proxy.Option) *Mirror {
	t.Helper()
	m := &Mirror{tb: t, upstreams: ups, dir: t.TempDir(), opts: opts, newStore: newStore, Clock: NewClock()}
	m.start()
	t.Cleanup(m.Stop)
	return m
}

// Logger is the logger test mirrors use: warnings and errors only.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (m *Mirror) start() {
	t := m.tb
	ctx := context.Background()
	index, err := storage.OpenIndex(filepath.Join(m.dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	var store storage.Store
	if m.newStore != nil {
		store, err = m.newStore(index)
	} else {
		store, err = storage.OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": filepath.Join(m.dir, "store")})
	}
	if err != nil {
		t.Fatal(err)
	}
	m.Metrics = metrics.New()
	var allowed []string
	for _, u := range m.upstreams {
		allowed = append(allowed, strings.TrimPrefix(strings.TrimPrefix(u.URL, "http://"), "https://"))
	}
	var clients []*upstream.Client
	for _, u := range m.upstreams {
		base := upstream.DefaultTransport()
		base.DialContext = upstream.GuardedDialer(allowed)
		uopts := []upstream.Option{upstream.WithTransport(m.Metrics.Transport(u.Host, base))}
		if u.Auth != nil {
			uopts = append(uopts, upstream.WithAuth(u.Auth))
		}
		if u.Timeout > 0 {
			uopts = append(uopts, upstream.WithTimeout(u.Timeout))
		}
		c, err := upstream.New(u.Host, u.URL, uopts...)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	opts := append([]proxy.Option{
		proxy.WithMetrics(m.Metrics),
		proxy.WithClock(m.Clock.Now),
		proxy.WithLogger(Logger()),
		proxy.WithSpoolDir(m.dir),
	}, m.opts...)
	p, err := proxy.New(store, index, clients, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ResumeMirrors(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.ResumeJobs(ctx); err != nil {
		t.Fatal(err)
	}
	m.Proxy, m.Index, m.Store = p, index, store
	m.server = httptest.NewServer(p.Handler())
}

// Host is the mirror's "127.0.0.1:PORT".
func (m *Mirror) Host() string { return m.server.Listener.Addr().String() }

// URL is the mirror's "http://127.0.0.1:PORT".
func (m *Mirror) URL() string { return m.server.URL }

// WaitIdle waits for background mirroring to finish.
func (m *Mirror) WaitIdle() {
	m.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Proxy.WaitIdle(ctx); err != nil {
		m.tb.Fatalf("background mirroring did not finish: %v", err)
	}
}

// Stop shuts the mirror down; it may be called more than once.
func (m *Mirror) Stop() {
	if m.server == nil {
		return
	}
	m.server.CloseClientConnections()
	m.server.Close()
	m.Proxy.Close()
	if err := m.Index.Close(); err != nil {
		m.tb.Error(err)
	}
	m.server = nil
}

// Restart stops the mirror and starts a new one on the same data
// directory (on a new port).
func (m *Mirror) Restart() {
	m.Stop()
	m.start()
}
