package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	"golang.org/x/net/http/httpproxy"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	statuspage "github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
)

// OpenStore opens the store cfg names: the destination registry if it has
// one (mounting shared blobs from the repositories the index says hold
// them), else the embedded store on its storage driver.
func OpenStore(ctx context.Context, cfg config.Config, index *storage.Index) (storage.Store, string, error) {
	if cfg.Destination.URL == "" {
		driver, _ := cfg.StorageDriver()
		s, err := OpenEmbeddedStore(ctx, cfg, true)
		if err != nil {
			return nil, "", storeError(cfg, err)
		}
		return s, driver, nil
	}
	opts := []destination.Option{destination.WithMountSources(func(_ context.Context, dgst digest.Digest) []string {
		holders, _ := index.Holders(dgst)
		repos := make([]string, 0, len(holders))
		for _, h := range holders {
			host, repo, _ := strings.Cut(h, "/")
			repos = append(repos, proxy.StoreRepo(host, repo))
		}
		return repos
	})}
	if cfg.Destination.Username != "" || cfg.Destination.Password != "" {
		opts = append(opts, destination.WithCredentials(cfg.Destination.Username, cfg.Destination.Password))
	}
	cas, err := cfg.Destination.RootCAs()
	if err != nil {
		return nil, "", err
	}
	if cas != nil {
		t := destination.DefaultTransport()
		t.TLSClientConfig = &tls.Config{RootCAs: cas}
		opts = append(opts, destination.WithTransport(t))
	}
	s, err := destination.New(cfg.Destination.WithScheme(), opts...)
	if err != nil {
		return nil, "", fmt.Errorf("destination: %w", err)
	}
	return s, "registry " + s.String(), nil
}

// OpenEmbeddedStore opens the embedded store cfg names, for the offline
// commands: clean removes the leftovers of interrupted writes (as a
// server does at start; on a shared disk only those untouched for
// storage.StaleUpload); without it nothing in the store changes.
func OpenEmbeddedStore(ctx context.Context, cfg config.Config, clean bool) (*storage.DriverStore, error) {
	driver, params := cfg.StorageDriver()
	if clean && driver == "filesystem" && SharesRecords(cfg) {
		// A shared disk: other replicas may be writing through the
		// uploads now.
		s, err := storage.CreateDriverStore(ctx, driver, params)
		if err != nil {
			return nil, err
		}
		if err := s.CleanStaleUploads(storage.StaleUpload); err != nil {
			return nil, fmt.Errorf("storage %s: removing interrupted uploads: %w", driver, err)
		}
		return s, nil
	}
	if clean {
		return storage.OpenDriverStore(ctx, driver, params)
	}
	return storage.CreateDriverStore(ctx, driver, params)
}

// proxyOptions are the proxy settings cfg makes: tag TTL, platforms,
// concurrency, the blob size limit, client access (auth, if not nil) and
// the per-upstream overrides.
func proxyOptions(cfg config.Config, m *metrics.Metrics, auth *access.File) ([]proxy.Option, error) {
	platforms, err := oci.ParsePlatforms(cfg.Platforms)
	if err != nil {
		return nil, err
	}
	opts := []proxy.Option{
		proxy.WithMetrics(m),
		proxy.WithTagTTL(time.Duration(cfg.TagTTL)),
		proxy.WithPlatforms(platforms),
		proxy.WithConcurrency(cfg.Concurrency),
		proxy.WithPrefetchMaxImages(cfg.MaxJobImages),
		proxy.WithMaxBlobSize(int64(cfg.MaxBlobSize)),
		proxy.WithReadyzFailWhenFull(cfg.ReadyzFailWhenFull),
		proxy.WithFreeSpace(func() (uint64, bool) {
			free, total := statuspage.DiskSpace(storeDisk(cfg))
			return free, total > 0
		}),
		proxy.WithReferrers(cfg.Referrers),
		proxy.WithBlobRedirects(cfg.StorageRedirect),
	}
	if auth != nil {
		// With users, the metrics (upstreams, repositories, traffic) are
		// theirs unless auth.metrics opens them.
		level, err := access.ParseLevel(cmp.Or(cfg.Auth.Metrics, "users"))
		if err != nil {
			return nil, err
		}
		opts = append(opts, proxy.WithAccess(auth, level))
	}
	for host, u := range cfg.AllUpstreams() {
		var s proxy.UpstreamSettings
		if u.TagTTL != nil {
			d := time.Duration(*u.TagTTL)
			s.TagTTL = &d
		}
		if u.Platforms != nil {
			if s.Platforms, err = oci.ParsePlatforms(u.Platforms); err != nil {
				return nil, err
			}
		}
		s.Referrers = u.Referrers
		if s.TagTTL != nil || s.Platforms != nil || s.Referrers != nil {
			opts = append(opts, proxy.WithUpstreamSettings(host, s))
		}
	}
	return opts, nil
}

// Upstreams builds a client for every configured upstream, with its
// credentials, its timeout, its metrics and a dial guard of its own:
// connections go to that upstream's own address (and its token server
// beside it, learned from its challenge), its allow_hosts, the
// environment's HTTP proxy, or public addresses; never to another
// upstream's private address. The HTTP
// proxy comes from lookup's HTTPS_PROXY, HTTP_PROXY and NO_PROXY (either
// case), and carries only requests the guard would let through.
func Upstreams(cfg config.Config, m *metrics.Metrics, lookup func(string) (string, bool)) ([]*upstream.Client, error) {
	all := cfg.AllUpstreams()
	addrs := map[string]string{} // host -> its URL's host[:port]
	for h, u := range all {
		if parsed, err := url.Parse(u.URL); err == nil {
			addrs[h] = parsed.Host
		}
	}
	proxyFor, proxies := envProxy(lookup)
	var clients []*upstream.Client
	for _, host := range slices.Sorted(maps.Keys(all)) {
		u := all[host]
		var others []string
		for h, a := range addrs {
			if h != host {
				others = append(others, a)
			}
		}
		allowed := append(append([]string{addrs[host]}, u.AllowHosts...), proxies...)
		guard := upstream.NewGuard(allowed, others)
		base := upstream.DefaultTransport()
		cas, err := u.RootCAs(host)
		if err != nil {
			return nil, err
		}
		if cas != nil {
			base.TLSClientConfig = &tls.Config{RootCAs: cas}
		}
		base.DialContext = guard.DialContext
		base.Proxy = nil
		if proxyFor != nil {
			base.Proxy = guard.Proxy(proxyFor)
		}
		opts := []upstream.Option{upstream.WithTransport(m.Transport(host, base)), upstream.WithGuard(guard), upstream.WithTimeout(time.Duration(cfg.UpstreamTimeout))}
		switch {
		case u.DockerConfig:
			opts = append(opts, upstream.WithKeychain(authn.DefaultKeychain))
		case u.PasswordFile != "":
			// Read as a keychain is, when credentials are needed: a
			// password rotated in the file is the one sent next.
			opts = append(opts, upstream.WithKeychain(passwordFile{host: host, u: u}))
		case u.Username != "":
			password, err := u.ResolvePassword(host, lookup)
			if err != nil {
				return nil, err
			}
			opts = append(opts, upstream.WithAuth(authn.FromConfig(authn.AuthConfig{Username: u.Username, Password: password})))
		}
		c, err := upstream.New(host, u.URL, opts...)
		if err != nil {
			return nil, err
		}
		clients = append(clients, c)
	}
	return clients, nil
}

// envProxy reads the HTTP proxy settings from lookup as net/http does from
// the environment (httpproxy: HTTPS_PROXY, HTTP_PROXY, NO_PROXY, upper
// case first; loopback never proxied), and returns the transport's Proxy
// function and the proxies' addresses, which the dial guard must allow.
func envProxy(lookup func(string) (string, bool)) (func(*http.Request) (*url.URL, error), []string) {
	get := func(names ...string) string {
		for _, n := range names {
			if v, ok := lookup(n); ok && v != "" {
				return v
			}
		}
		return ""
	}
	pc := &httpproxy.Config{
		HTTPProxy:  get("HTTP_PROXY", "http_proxy"),
		HTTPSProxy: get("HTTPS_PROXY", "https_proxy"),
		NoProxy:    get("NO_PROXY", "no_proxy"),
		CGI:        get("REQUEST_METHOD") != "",
	}
	if pc.HTTPProxy == "" && pc.HTTPSProxy == "" {
		return nil, nil
	}
	var addrs []string
	for _, p := range []string{pc.HTTPProxy, pc.HTTPSProxy} {
		if a := proxyAddr(p); a != "" {
			addrs = append(addrs, a)
		}
	}
	proxyFor := pc.ProxyFunc()
	return func(r *http.Request) (*url.URL, error) { return proxyFor(r.URL) }, addrs
}

// proxyAddr is the host:port of a proxy setting, read as httpproxy reads
// it (a bare host:port is an http:// proxy); "" if it names none.
func proxyAddr(p string) string {
	if p == "" {
		return ""
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme == "" || u.Host == "" {
		if u, err = url.Parse("http://" + p); err != nil {
			return ""
		}
	}
	if u.Host == "" {
		return ""
	}
	if u.Port() != "" {
		return u.Host
	}
	port := map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}[u.Scheme]
	if port == "" {
		return ""
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// storeDisk returns a directory on the disk the cache grows on: the
// filesystem store's root, which may be a disk of its own, else the data
// directory's (the spool's, and the index's).
func storeDisk(cfg config.Config) string {
	if name, params := cfg.StorageDriver(); name == "filesystem" && cfg.Destination.URL == "" {
		if root, ok := params["rootdirectory"].(string); ok && root != "" {
			return root
		}
	}
	return cfg.Data
}

// newStatus makes the status page of a server: its store, the disk the
// cache grows on (the filesystem store's root, which may be a disk of its
// own, else the data directory's), its registry destination if it has
// one, and in a cluster the other replicas' states.
func newStatus(s *Server) *statuspage.Handler {
	cfg := s.cfg
	disk := storeDisk(cfg)
	d := statuspage.Deps{Proxy: s.Proxy, Index: s.Index, Collector: s.Collector, Version: s.opts.version,
		StoreKind: s.storeName, MaxSize: int64(cfg.MaxSize), DataDir: disk, Now: s.opts.now}
	if cfg.Destination.URL != "" {
		d.DestinationName = s.storeName
		d.Destination = func(ctx context.Context) error { return s.Proxy.CheckStore(ctx, readyTimeout) }
	}
	if s.Cluster != nil {
		d.Peers = func(ctx context.Context) []statuspage.PeerState {
			var peers []statuspage.PeerState
			for _, p := range s.Cluster.Peers() {
				st := statuspage.PeerState{Name: p.URL, State: "ok", LastError: p.Error, Since: p.Since}
				if p.Self {
					st.Name += " (this replica)"
					// As the others' probes see it: its store refusing
					// (a bucket's rotated credentials), it is out of
					// their hashing and of the load balancer. Not
					// waited for: a bucket that hangs would hold every
					// load of the page.
					if err := s.Proxy.ReadyzLast(ctx, readyTimeout); err != nil {
						st.State, st.LastError, st.Since = "not ready", storeError(cfg, err).Error(), time.Time{}
					}
				}
				switch {
				case p.NotReady:
					st.State = "not ready"
				case !p.Up:
					st.State = "unreachable"
				case p.SecretRefused:
					st.State = "secret refused"
					st.LastError = "it does not take this replica's cluster secret: requests forwarded to it are not trusted (with client auth, refused and fetched here)"
				}
				peers = append(peers, st)
			}
			return peers
		}
	}
	return statuspage.New(d)
}

// passwordFile is the keychain of an upstream whose password is in its
// password_file: the file is read at each token request (and, for a
// registry of basic auth, when the upstream refuses the password read
// before), so that a password rotated in the file (a Kubernetes secret
// updated in its volume) is used without a restart.
type passwordFile struct {
	host string
	u    config.Upstream
}

// Resolve returns the username and the password in the file now.
func (p passwordFile) Resolve(authn.Resource) (authn.Authenticator, error) {
	password, err := p.u.ResolvePassword(p.host, nil)
	if err != nil {
		return nil, err
	}
	return authn.FromConfig(authn.AuthConfig{Username: p.u.Username, Password: password}), nil
}
