package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/server"
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

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs docker-mirror as cfg describes on ln until ctx ends, then
// shuts down gracefully. A signal on hup (SIGHUP) reloads the TLS
// certificate.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, ln net.Listener, hup <-chan os.Signal) error {
	srv, err := server.New(ctx, cfg, server.WithLogger(log), server.WithVersion(versionString()))
	if err != nil {
		ln.Close()
		return err
	}
	return errors.Join(srv.Serve(ctx, ln, hup), srv.Close())
}
