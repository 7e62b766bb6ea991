package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
)

func serveCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	flags := config.Bind(fs)
	if code, ok := parseFlags(fs, args, "docker-mirror serve [flags]", stdout, stderr); !ok {
		return code
	}
	cfg, err := flags.Resolve(os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror serve: %v\n", err)
		return exitUsage
	}
	log := newLogger(cfg, stderr)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error("cannot listen", "listen", cfg.Listen, "error", err)
		return 1
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := serve(ctx, cfg, log, ln, hup); err != nil {
		log.Error("docker-mirror stopped", "error", err)
		return 1
	}
	return 0
}

// lifecycleTicks drives the cache lifecycle: a collection every ten
// minutes, and at once when the store has outgrown maxSize.
func lifecycleTicks(ctx context.Context, index *storage.Index, maxSize int64) <-chan time.Time {
	ticks := make(chan time.Time)
	go func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				if n%10 != 0 && (maxSize <= 0 || index.StoredBytes() <= maxSize) {
					continue
				}
				select {
				case ticks <- now:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ticks
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs the proxy on ln until ctx ends, then shuts down gracefully.
// A signal on hup (SIGHUP) reloads the TLS certificate.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, ln net.Listener, hup <-chan os.Signal) error {
	defer ln.Close()
	if err := os.MkdirAll(cfg.Data, 0o755); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	spool := filepath.Join(cfg.Data, "tmp")
	// Spool files of downloads interrupted by a crash are never reused.
	if err := os.RemoveAll(spool); err != nil {
		return fmt.Errorf("cleaning %s: %w", spool, err)
	}
	if err := os.MkdirAll(spool, 0o755); err != nil {
		return fmt.Errorf("spool directory: %w", err)
	}
	index, err := storage.OpenIndex(filepath.Join(cfg.Data, "index.db"))
	if err != nil {
		return err
	}
	defer index.Close()
	store, storeName, err := openStore(ctx, cfg, index)
	if err != nil {
		return err
	}
	m := metrics.New()
	lm := lifecycle.NewMetrics()
	m.Register(lm.Collectors()...)
	inUse := lifecycle.NewInUse()
	p, err := newProxy(cfg, store, index, log, m, spool, proxy.WithContentGuard(inUse))
	if err != nil {
		return err
	}
	defer p.Close()
	col, err := lifecycle.NewForStore(store, index, lifecycle.Options{Grace: lifecycle.DefaultGrace, Guard: inUse, Log: log, Metrics: lm})
	switch {
	case errors.Is(err, lifecycle.ErrRegistryDestination):
		// The destination registry collects its own garbage.
	case err != nil:
		return err
	default:
		var running sync.WaitGroup
		defer running.Wait() // before the index closes
		running.Go(func() {
			col.Run(ctx, lifecycleTicks(ctx, index, int64(cfg.MaxSize)), lifecycle.Policy{MaxSize: int64(cfg.MaxSize), EvictAfter: time.Duration(cfg.EvictAfter)})
		})
	}
	if err := p.ResumeMirrors(ctx); err != nil {
		return err
	}
	if err := p.ResumeJobs(ctx); err != nil {
		return err
	}
	if cfg.Sync.Interval > 0 {
		go p.RunSync(ctx, proxy.Sync{Images: cfg.Sync.Images, Platforms: cfg.Sync.Platforms, Pin: cfg.Sync.Pin}, time.Duration(cfg.Sync.Interval))
	}

	srv := &http.Server{
		Handler: p.Handler(),
		// Slow or oversized clients cannot hold the server: headers within
		// --header-timeout and 64 KiB, request bodies (only POST /prefetch
		// has one) within a minute. No write timeout: a blob may take long.
		ReadHeaderTimeout: time.Duration(cfg.HeaderTimeout),
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	var certs *certReloader
	if cfg.TLSCert != "" {
		if certs, err = newCertReloader(cfg.TLSCert, cfg.TLSKey); err != nil {
			return err
		}
		srv.TLSConfig = &tls.Config{GetCertificate: certs.getCertificate, MinVersion: tls.VersionTLS12}
	}
	upstreams := slices.Sorted(maps.Keys(cfg.AllUpstreams()))
	log.Info("docker-mirror serving", "listen", ln.Addr().String(), "tls", certs != nil, "data", cfg.Data, "store", storeName,
		"upstreams", upstreams, "tag_ttl", cfg.TagTTL.String(), "platforms", cfg.Platforms, "auth", cfg.Auth.Htpasswd != "", "version", versionString())

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
	for {
		select {
		case err := <-errc:
			return err
		case <-hup:
			if certs != nil {
				if err := certs.reload(); err != nil {
					log.Error("reloading the TLS certificate; keeping the current one", "error", err)
				} else {
					log.Info("reloaded the TLS certificate", "cert", cfg.TLSCert)
				}
			}
		case <-flush.C:
			if err := index.Flush(); err != nil {
				log.Warn("writing access times", "error", err)
			}
		case <-ctx.Done():
			log.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
			sctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownTimeout))
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return nil
		}
	}
}
