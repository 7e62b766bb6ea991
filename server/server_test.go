package server

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// testConfig is a configuration for a server in a test: data in a
// temporary directory, an upstream that is never reached.
func testConfig(t *testing.T) config.Config {
	cfg := config.Default()
	cfg.Data = filepath.Join(t.TempDir(), "data")
	cfg.Upstream = "http://127.0.0.1:1"
	return cfg
}

// startServe runs a server of cfg on a local port and returns its address
// and a function that stops it (as SIGTERM would) and returns the error
// of Serve and Close. opts are New's, after a logger that discards.
func startServe(t *testing.T, cfg config.Config, hup <-chan os.Signal, opts ...Option) (addr string, stop func() error) {
	t.Helper()
	srv, err := New(t.Context(), cfg, append([]Option{WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		err := srv.Serve(ctx, ln, hup)
		if cerr := srv.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	stopped := false
	var result error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-done
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return ln.Addr().String(), stop
}

// A server answers the API, shuts down cleanly when its context ends, and
// leaves an index that opens again.
func TestServeAndClose(t *testing.T) {
	cfg := testConfig(t)
	addr, stop := startServe(t, cfg, nil)
	resp, err := http.Get("http://" + addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: %d %v", resp.StatusCode, resp.Header)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ix, err := storage.OpenIndex(IndexPath(cfg))
	if err != nil {
		t.Fatalf("index after shutdown: %v", err)
	}
	ix.Close()
}

// New fails, naming the problem, on what cannot work, and leaves nothing
// open behind (the index opens again).
func TestNewFailsCleanly(t *testing.T) {
	cfg := testConfig(t)
	cfg.Platforms = []string{"Linux/amd64"}
	if _, err := New(t.Context(), cfg); err == nil {
		t.Fatal("a bad platform was accepted")
	}
	ix, err := storage.OpenIndex(IndexPath(cfg))
	if err != nil {
		t.Fatalf("index left locked after a failed New: %v", err)
	}
	ix.Close()
}

// A sync whose images a run could not read is refused at the start, in
// one line naming the entry, instead of each run failing with a warning;
// the same images with the sync off, or read as they are, start.
func TestNewChecksTheSyncsImages(t *testing.T) {
	for _, c := range []struct{ image, says string }{
		{"library/redis:[7", `"library/redis:[7": invalid tag pattern "[7"`},
		{"Redis:7", `invalid image reference "Redis:7"`},
		{"quay.io/org/app:1", `upstream "quay.io" is not configured`},
		{"docker.io/ghcr.io/app:1.*", `"ghcr.io" is a registry host`},
	} {
		cfg := testConfig(t)
		cfg.Sync.Interval = config.Duration(time.Hour)
		cfg.Sync.Images = []string{"nginx:1.27", c.image}
		_, err := New(t.Context(), cfg)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "sync.images: ") || !strings.Contains(err.Error(), c.says) {
			t.Errorf("sync of %q: error %v, want one line starting sync.images: and saying %s", c.image, err, c.says)
		}
	}
	for _, interval := range []time.Duration{0, time.Hour} {
		cfg := testConfig(t)
		cfg.Sync.Interval = config.Duration(interval)
		cfg.Sync.Images = []string{"nginx:1.27", "library/redis:7.*", "ghcr.io/org/app@sha256:" + strings.Repeat("0", 64)}
		cfg.Upstreams = map[string]config.Upstream{"ghcr.io": {URL: "http://127.0.0.1:1"}}
		if interval == 0 {
			cfg.Sync.Images = append(cfg.Sync.Images, "Redis:7")
		}
		s, err := New(t.Context(), cfg)
		if err != nil {
			t.Fatalf("sync every %s: %v", interval, err)
		}
		s.Close()
	}
}

// The start-up line and whatever else a server logs while it starts,
// serves and stops show no password of the configuration.
func TestLogsShowNoSecrets(t *testing.T) {
	cfg := testConfig(t)
	cfg.Upstreams = map[string]config.Upstream{"ghcr.io": {URL: "http://127.0.0.1:1", Username: "bot", Password: "hunter2"}}
	cfg.Destination = config.Destination{URL: "http://127.0.0.1:1/mirror", Username: "bot", Password: "hunter2"}
	var logs fixture.LogBuffer
	srv, err := New(t.Context(), cfg, WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, nil) }()
	if resp, err := http.Get("http://" + ln.Addr().String() + "/v2/ghcr.io/x/manifests/1"); err == nil {
		resp.Body.Close()
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	srv.Close()
	out := logs.String()
	if !strings.Contains(out, "docker-mirror serving") {
		t.Fatalf("no start-up line in %q", out)
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("the logs show a password:\n%s", out)
	}
}
