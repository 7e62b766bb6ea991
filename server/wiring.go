package server

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
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
			return nil, "", err
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
	s, err := destination.New(cfg.Destination.URL, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("destination: %w", err)
	}
	return s, "registry " + s.String(), nil
}

// OpenEmbeddedStore opens the embedded store cfg names, for the offline
// commands: clean removes the leftovers of interrupted writes (as a
// server does at start); without it nothing in the store changes.
func OpenEmbeddedStore(ctx context.Context, cfg config.Config, clean bool) (*storage.DriverStore, error) {
	driver, params := cfg.StorageDriver()
	if clean {
		return storage.OpenDriverStore(ctx, driver, params)
	}
	d, err := factory.Create(ctx, driver, params)
	if err != nil {
		return nil, fmt.Errorf("storage %s: %w", driver, err)
	}
	return storage.NewDriverStore(d), nil
}

// proxyOptions are the proxy settings cfg makes: tag TTL, platforms,
// concurrency, client access and the per-upstream overrides.
func proxyOptions(cfg config.Config, m *metrics.Metrics) ([]proxy.Option, error) {
	platforms, err := oci.ParsePlatforms(cfg.Platforms)
	if err != nil {
		return nil, err
	}
	opts := []proxy.Option{
		proxy.WithMetrics(m),
		proxy.WithTagTTL(time.Duration(cfg.TagTTL)),
		proxy.WithPlatforms(platforms),
		proxy.WithConcurrency(cfg.Concurrency),
		proxy.WithReadyzFailWhenFull(cfg.ReadyzFailWhenFull),
	}
	if cfg.Auth.Htpasswd != "" {
		policy, err := access.Load(cfg.Auth.Htpasswd, cfg.Auth.Admins, cfg.Auth.AnonymousPull)
		if err != nil {
			return nil, err
		}
		level, err := access.ParseLevel(cfg.Auth.Metrics)
		if err != nil {
			return nil, err
		}
		opts = append(opts, proxy.WithAccess(policy, level))
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
		if s.TagTTL != nil || s.Platforms != nil {
			opts = append(opts, proxy.WithUpstreamSettings(host, s))
		}
	}
	return opts, nil
}

// Upstreams builds a client for every configured upstream, with its
// credentials, its timeout, its metrics and the dial guard: connections go
// only to the configured upstreams, the environment's HTTP proxy, or
// public addresses.
func Upstreams(cfg config.Config, m *metrics.Metrics, lookup func(string) (string, bool)) ([]*upstream.Client, error) {
	all := cfg.AllUpstreams()
	var allowed []string
	for _, u := range all {
		if parsed, err := url.Parse(u.URL); err == nil {
			allowed = append(allowed, parsed.Host)
		}
	}
	// An HTTP proxy from the environment is where connections go.
	for _, env := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		if v, ok := lookup(env); ok && v != "" {
			if parsed, err := url.Parse(v); err == nil && parsed.Host != "" {
				allowed = append(allowed, parsed.Host)
			}
		}
	}
	var clients []*upstream.Client
	for _, host := range slices.Sorted(maps.Keys(all)) {
		u := all[host]
		base := upstream.DefaultTransport()
		base.DialContext = upstream.GuardedDialer(allowed)
		opts := []upstream.Option{upstream.WithTransport(m.Transport(host, base)), upstream.WithTimeout(time.Duration(cfg.UpstreamTimeout))}
		switch {
		case u.DockerConfig:
			opts = append(opts, upstream.WithKeychain(authn.DefaultKeychain))
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
