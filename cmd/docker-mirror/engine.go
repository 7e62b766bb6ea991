package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/registry"
)

// openStore returns the store cfg names: the destination registry if it
// has one, else the embedded store. It also says which, for the log.
func openStore(ctx context.Context, cfg config.Config, index *storage.Index) (storage.Store, string, error) {
	if cfg.Destination.URL == "" {
		driver, params := cfg.StorageDriver()
		s, err := storage.OpenDriverStore(ctx, driver, params)
		return s, driver, err
	}
	opts := []registry.Option{registry.WithMountSources(func(_ context.Context, dgst digest.Digest) []string {
		holders, _ := index.Holders(dgst)
		repos := make([]string, 0, len(holders))
		for _, h := range holders {
			host, repo, _ := strings.Cut(h, "/")
			repos = append(repos, proxy.StoreRepo(host, repo))
		}
		return repos
	})}
	if cfg.Destination.Username != "" || cfg.Destination.Password != "" {
		opts = append(opts, registry.WithCredentials(cfg.Destination.Username, cfg.Destination.Password))
	}
	s, err := registry.New(cfg.Destination.URL, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("destination: %w", err)
	}
	return s, "registry " + s.String(), nil
}

// newProxy wires the upstreams, metrics and settings of cfg around a store
// and an index.
func newProxy(cfg config.Config, store storage.Store, index *storage.Index, log *slog.Logger, m *metrics.Metrics, spool string) (*proxy.Proxy, error) {
	hub, err := upstream.New(proxy.DefaultHost, cfg.Upstream,
		upstream.WithTransport(m.Transport(proxy.DefaultHost, upstream.DefaultTransport())))
	if err != nil {
		return nil, err
	}
	var platforms []proxy.Platform
	for _, s := range cfg.Platforms {
		pl, err := proxy.ParsePlatform(s)
		if err != nil {
			return nil, err
		}
		platforms = append(platforms, pl)
	}
	return proxy.New(store, index, []*upstream.Client{hub},
		proxy.WithLogger(log),
		proxy.WithMetrics(m),
		proxy.WithTagTTL(time.Duration(cfg.TagTTL)),
		proxy.WithPlatforms(platforms),
		proxy.WithConcurrency(cfg.Concurrency),
		proxy.WithSpoolDir(spool),
	)
}
