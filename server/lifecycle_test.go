package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// fakeClock is a clock that moves only when advanced.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// signalHandler signals on ch each log record whose message is msg.
type signalHandler struct {
	msg string
	ch  chan<- struct{}
}

func (h signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h signalHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.ch <- struct{}{}
	}
	return nil
}
func (h signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h signalHandler) WithGroup(string) slog.Handler      { return h }

// The lifecycle as Serve runs it: a pull that takes the store past
// --max-size wakes a pass at once, with no tick and the clock standing
// still (no grace period of minutes to wait out), and the space of the
// least recently pulled image is freed.
func TestLifecycleWakesOnMaxSize(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/old", "v1", 2, 32<<10)
	up.SeedImage(t, "library/new", "v1", 2, 32<<10)
	clock := &fakeClock{t: time.Now()}
	collected := make(chan struct{}, 16)

	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.Upstream = up.URL()
	cfg.Upstreams = map[string]config.Upstream{"docker.io": {URL: up.URL()}}
	cfg.MaxSize = 100 << 10 // room for one image of ~64 KiB, not two
	s, err := New(t.Context(), cfg, WithClock(clock.Now), WithLogger(slog.New(signalHandler{"cache collected", collected})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.runLifecycle(ctx, nil) // no ticks: only a wake runs a pass
	}()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		srv.Close()
		cancel()
		<-done
		s.Close()
	})

	pull := func(repo string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v2/" + repo + "/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %s: status %d", repo, resp.StatusCode)
		}
		if err := s.Proxy.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	pull("old")
	if got := s.Index.StoredBytes(); got > int64(cfg.MaxSize) {
		t.Fatalf("one image is %d bytes, over the limit", got)
	}
	clock.Advance(time.Second)
	pull("new")
	<-collected
	if _, ok, _ := s.Index.Tag("docker.io", "library/old", "v1"); ok {
		t.Error("old is still cached")
	}
	if _, ok, _ := s.Index.Tag("docker.io", "library/new", "v1"); !ok {
		t.Error("new was evicted")
	}
	if got := s.Index.StoredBytes(); got > int64(cfg.MaxSize) {
		t.Errorf("stored %d bytes, over the limit %d", got, int64(cfg.MaxSize))
	}
}

// A page of the index damaged while the server runs, which a pass of the
// lifecycle comes upon, stops Serve with the error saying so (the pass
// panicked in the lifecycle's goroutine, and the process died with a
// stack trace).
func TestLifecycleMeetingADamagedIndexStopsServe(t *testing.T) {
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.Upstream = "http://127.0.0.1:1"
	s, err := New(t.Context(), cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for i := range 50 {
		if err := s.Index.RecordBlob("docker.io", "library/a", digest.FromString(fmt.Sprint(i)), 10, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	pg, ok := fixture.BucketPages(t, s.Index.Path())["blobs"]
	if !ok {
		t.Fatal("the blobs have no page of their own")
	}
	fixture.DamagePage(t, s.Index.Path(), pg)
	ticks := make(chan time.Time, 1)
	ticks <- time.Time{}
	s.runLifecycle(t.Context(), ticks) // returns once the pass found the damage
	select {
	case err := <-s.damaged:
		if !errors.Is(err, storage.ErrDamaged) || !strings.Contains(err.Error(), s.Index.Path()) {
			t.Fatalf("Serve is stopped with %v; want the index named damaged", err)
		}
	default:
		t.Fatal("the damaged index does not stop Serve")
	}
}
