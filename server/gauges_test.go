package server

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
)

// The gauges alert rules compare against: max_size as configured, and
// readiness as /readyz sees it.
func TestAlertGauges(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxSize = 10 << 20
	srv, err := New(t.Context(), cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := scrape(srv)
	for _, want := range []string{"\ndocker_mirror_store_max_size_bytes 1.048576e+07\n", "\ndocker_mirror_ready 1\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q", strings.TrimSpace(want))
		}
	}
	// An index that cannot be read: not ready.
	if err := srv.Index.Close(); err != nil {
		t.Fatal(err)
	}
	if got := scrape(srv); !strings.Contains(got, "\ndocker_mirror_ready 0\n") {
		t.Errorf("with the index closed: %s", grepReady(got))
	}
}

// scrape returns what srv's /metrics answers.
func scrape(srv *Server) string {
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func grepReady(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "docker_mirror_ready") {
			return l
		}
	}
	return "no docker_mirror_ready"
}

// A scrape answers while the store hangs: the ready gauge is the last
// answer of the store's readiness lookup, and 0 once the lookup under way
// has gone unanswered for over 5 s. Every scrape waited up to 5 s for the
// lookup, to say 0 with a timeout, holding all the replica's metrics
// towards Prometheus' scrape timeout.
func TestReadyGaugeDoesNotWaitForAHangingStore(t *testing.T) {
	var hanging atomic.Bool
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	clock := &fakeClock{t: time.Now()}
	srv, err := New(t.Context(), testConfig(t), WithLogger(slog.New(slog.DiscardHandler)), WithClock(clock.Now),
		WithStore(func(ctx context.Context, cfg config.Config, ix *storage.Index) (storage.Store, string, error) {
			s, name, err := OpenStore(ctx, cfg, ix)
			return storetest.HangingReadiness{Store: s, Hanging: &hanging, Entered: entered, Gate: gate}, name, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer close(gate) // before the server closes
	if got := scrape(srv); !strings.Contains(got, "\ndocker_mirror_ready 1\n") {
		t.Fatalf("before the store hangs: %s", grepReady(got))
	}
	hanging.Store(true)
	// Answered with the gate closed: the scrape did not wait for the lookup.
	if got := scrape(srv); !strings.Contains(got, "\ndocker_mirror_ready 1\n") {
		t.Errorf("its readiness lookup just started and hanging: %s, want 1 (the last answer) at once", grepReady(got))
	}
	select {
	case <-entered: // the scrape's lookup, hanging
	case <-t.Context().Done():
		t.Fatal("the scrape started no readiness lookup")
	}
	clock.Advance(6 * time.Second)
	if got := scrape(srv); !strings.Contains(got, "\ndocker_mirror_ready 0\n") {
		t.Errorf("its readiness lookup hanging for 6s: %s, want 0", grepReady(got))
	}
}

// The index's writes are counted at scrape time: a write adds one commit,
// the pages it wrote and the time it held the write lock.
func TestIndexWriteMetrics(t *testing.T) {
	srv, err := New(t.Context(), testConfig(t), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	indexWrites := func() map[string]float64 {
		t.Helper()
		got := map[string]float64{}
		for _, l := range strings.Split(scrape(srv), "\n") {
			name, v, ok := strings.Cut(l, " ")
			if !ok || !strings.HasPrefix(name, "docker_mirror_index_") {
				continue
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			got[name] = f
		}
		return got
	}
	before := indexWrites()
	if err := srv.Index.Pin(t.Context(), "docker.io/library/a:v1", storage.PinRecord{PinnedAt: time.Now(), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	after := indexWrites()
	for _, name := range []string{"docker_mirror_index_commits_total", "docker_mirror_index_pages_written_total", "docker_mirror_index_write_lock_seconds_total",
		"docker_mirror_index_write_lock_cpu_seconds_total", "docker_mirror_index_write_lock_page_faults_total", "docker_mirror_index_slow_writes_total"} {
		if _, ok := after[name]; !ok {
			t.Errorf("no %s", name)
		}
	}
	if d := after["docker_mirror_index_commits_total"] - before["docker_mirror_index_commits_total"]; d != 1 {
		t.Errorf("a write added %v commits, want 1", d)
	}
	if d := after["docker_mirror_index_pages_written_total"] - before["docker_mirror_index_pages_written_total"]; d < 1 {
		t.Errorf("a write added %v pages written", d)
	}
	if d := after["docker_mirror_index_write_lock_seconds_total"] - before["docker_mirror_index_write_lock_seconds_total"]; d <= 0 {
		t.Errorf("a write added %v s of the write lock", d)
	}
	// The lock's CPU and faults are the index's totals (which the storage
	// tests check are counted), each in its own metric, read where no
	// write came between the scrape and the totals; a commit computes for
	// some microseconds at least.
	compared := false
	for i := 0; i < 100 && !compared; i++ {
		w := srv.Index.WriteTotals()
		got := indexWrites()
		if srv.Index.WriteTotals() != w {
			continue // a background write between the two
		}
		if v := got["docker_mirror_index_write_lock_cpu_seconds_total"]; v != w.CPU.Seconds() {
			t.Errorf("write lock CPU: metric %v, index %v", v, w.CPU.Seconds())
		}
		if v := got["docker_mirror_index_write_lock_page_faults_total"]; v != float64(w.Faults) {
			t.Errorf("write lock faults: metric %v, index %v", v, w.Faults)
		}
		compared = true
	}
	if !compared {
		t.Error("the index's writes never stopped long enough to compare a scrape with its totals")
	}
	if d := after["docker_mirror_index_write_lock_cpu_seconds_total"] - before["docker_mirror_index_write_lock_cpu_seconds_total"]; runtime.GOOS == "linux" && d <= 0 {
		t.Errorf("a write added %v s of CPU under the write lock", d)
	}
}
