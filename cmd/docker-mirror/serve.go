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
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/server"
)

func serveCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	flags := config.Bind(fs)
	if code, ok := parseFlags(fs, args, "docker-mirror serve [flags]", stdout, stderr); !ok {
		return code
	}
	cfg, err := flags.Resolve(os.LookupEnv)
	if err == nil {
		err = cfg.CheckEnvironment(os.Environ(), prefetchPasswordEnv)
	}
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror serve: %s\n", oneLine(err))
		return exitUsage
	}
	log := newLogger(cfg, stderr)
	applyMemoryLimit(cfg)
	// From here on a SIGHUP (systemctl reload right after the start) is
	// kept for the server, which reloads once it serves: unhandled, it
	// would end the process without a word.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Whatever can fail the start (the TLS pair, the data directory, the
	// index, the htpasswd file, the port) fails before the server
	// answers, each with one line and exit 1: nothing listens silently.
	srv, err := server.New(ctx, cfg, server.WithLogger(log), server.WithVersion(versionString()),
		server.WithGCHold(passGCHold(cfg)))
	if err != nil {
		fmt.Fprintf(stderr, "docker-mirror serve: %s\n", oneLine(err))
		return 1
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		srv.Close()
		fmt.Fprintf(stderr, "docker-mirror serve: %s\n", oneLine(err)) // net.Listen names the address
		return 1
	}
	if err := serve(ctx, srv, ln, hup); err != nil {
		log.Error("docker-mirror stopped", "error", err)
		return 1
	}
	return 0
}

// applyMemoryLimit sets the runtime's soft memory limit if memory_limit
// is set (else GOMEMLIMIT, read by the runtime, stands): the process's
// own setting, for its whole life.
func applyMemoryLimit(cfg config.Config) {
	if cfg.MemoryLimit > 0 {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
	}
}

// passGCHold is the process's GC hold of pass_gc_percent (nil if 0):
// the lifecycle's passes lower the GC percent while they run. Made once,
// like the memory limit: the percent is the process's.
func passGCHold(cfg config.Config) *gchold.Hold { return gchold.New(cfg.PassGCPercent) }

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs srv on ln until ctx ends, then shuts down gracefully and
// closes srv. A signal on hup (SIGHUP) reloads the TLS certificate and
// the htpasswd file.
func serve(ctx context.Context, srv *server.Server, ln net.Listener, hup <-chan os.Signal) error {
	return errors.Join(srv.Serve(ctx, ln, hup), srv.Close())
}

// oneLine returns err's text on one line, its lines joined with "; ": a
// start that fails says why in one line, whatever library wrote the error.
func oneLine(err error) string {
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}
