package server

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A start leaves the fills an earlier run interrupted to the background:
// Start returns before them, a pull meanwhile is answered from the cache,
// and the fill then completes, the stored total (read from the index's
// record) what the earlier run had.
func TestStartResumesFillsInTheBackground(t *testing.T) {
	up := fixture.StartUpstream(t)
	up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.Upstream = up.URL()
	cfg.Upstreams = map[string]config.Upstream{"docker.io": {URL: up.URL()}}

	pull := func(t *testing.T, s *Server) *http.Response {
		t.Helper()
		srv := httptest.NewServer(s.Handler())
		defer srv.Close()
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/v2/library/app/manifests/v1", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", oci.Accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}

	// The first run pulls the image and mirrors it whole.
	s, err := New(t.Context(), cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if resp := pull(t, s); resp.StatusCode != http.StatusOK {
		t.Fatalf("first pull: %s", resp.Status)
	}
	if err := s.Proxy.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	tag, ok, err := s.Index.Tag("docker.io", "library/app", "v1")
	if err != nil || !ok {
		t.Fatalf("tag after the pull: %v, %v", ok, err)
	}
	stored := s.Index.StoredBytes()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// As if it stopped while mirroring: the image's fill is partial.
	ix, err := storage.OpenIndex(IndexPath(cfg))
	if err != nil {
		t.Fatal(err)
	}
	fill, ok, err := ix.Fill("docker.io", "library/app", tag.Digest)
	if err != nil || !ok || fill.State != storage.FillComplete {
		t.Fatalf("fill record after the first run: %+v, %v, %v", fill, ok, err)
	}
	fill.State = storage.FillPartial
	if err := ix.PutFill(tag.Digest, fill); err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}

	resumed := make(chan struct{}, 1)
	s, err = New(t.Context(), cfg, WithLogger(slog.New(signalHandler{"resuming interrupted fills", resumed})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer func() {
		cancel()
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if resp := pull(t, s); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cache") != "hit" {
		t.Fatalf("pull while the start's work runs: %s, X-Cache %q", resp.Status, resp.Header.Get("X-Cache"))
	}
	<-resumed // the fill is enqueued
	if err := s.Proxy.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if fill, _, err := s.Index.Fill("docker.io", "library/app", tag.Digest); err != nil || fill.State != storage.FillComplete {
		t.Fatalf("fill after the resume: %+v, %v", fill, err)
	}
	if got := s.Index.StoredBytes(); got != stored {
		t.Fatalf("StoredBytes after the restart = %d, want the first run's %d", got, stored)
	}
}
