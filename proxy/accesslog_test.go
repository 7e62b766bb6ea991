package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/docker-mirror/docker-mirror/storage"
)

// logLines is a slog handler that hands each record to its channel.
type logLines chan slog.Record

func (l logLines) Enabled(context.Context, slog.Level) bool      { return true }
func (l logLines) Handle(_ context.Context, r slog.Record) error { l <- r.Clone(); return nil }
func (l logLines) WithAttrs([]slog.Attr) slog.Handler            { return l }
func (l logLines) WithGroup(string) slog.Handler                 { return l }

// accessLine waits for the next access-log line and returns its level
// and attributes.
func (l logLines) accessLine(t *testing.T) (slog.Level, map[string]slog.Value) {
	t.Helper()
	for {
		r := recvWithin(t, (<-chan slog.Record)(l), "no access-log line")
		if r.Message != "request" {
			continue
		}
		attrs := map[string]slog.Value{}
		r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value; return true })
		return r.Level, attrs
	}
}

// counterValue reads a counter.
func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A HEAD answer has no body: net/http drops what a handler writes for
// it. The access line and the served-bytes metric say no bytes were sent,
// for the answers (an error, /v2/) whose handlers write a body anyway.
func TestHeadAnswerCountsNoBytes(t *testing.T) {
	lines := make(logLines, 16)
	p, _, _ := testMirror(t, nil, "http://127.0.0.1:1", WithLogger(slog.New(lines)))
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	for _, c := range []struct{ path, route string }{
		{"/v2/", "base"},
		{"/v2/Bad/manifests/latest", "manifest"},
		{"/no/such", "notfound"},
	} {
		req, err := http.NewRequest(http.MethodHead, srv.URL+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		_, attrs := lines.accessLine(t)
		if got := attrs["bytes"].Int64(); got != 0 {
			t.Errorf("HEAD %s (%d): access line bytes=%d, want 0", c.path, resp.StatusCode, got)
		}
		if got := counterValue(t, p.metrics.ServedBytes.WithLabelValues(c.route)); got != 0 {
			t.Errorf("HEAD %s (%d): docker_mirror_served_bytes_total{route=%q} = %v, want 0", c.path, resp.StatusCode, c.route, got)
		}
	}
}

// A client that hangs up in the middle of a blob it is served from the
// cache went away: the access line says 499 at DEBUG, as for one that
// leaves a download, not a 200 whose response broke (WARN). From a store
// in files the body goes by sendfile, from one in memory by a copy.
func TestClientGoneMidBlobIs499(t *testing.T) {
	for _, driver := range []string{"filesystem", "inmemory"} {
		t.Run(driver, func(t *testing.T) {
			store, err := storage.OpenDriverStore(t.Context(), driver, map[string]any{"rootdirectory": t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			lines := make(logLines, 16)
			p, up, _ := testMirror(t, store, "http://127.0.0.1:1", WithLogger(slog.New(lines)))
			tg := target{up: up, repo: "library/x", name: "x"}
			body := bytes.Repeat([]byte("0123456789abcdef"), 4<<20) // 64 MiB: more than the sockets' buffers hold
			d := storeHit(t, p, tg, p.store, body)
			srv := httptest.NewServer(p.Handler())
			defer srv.Close()
			resp, err := srv.Client().Get(srv.URL + "/v2/x/blobs/" + d.String())
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || resp.Header.Get(cacheHeader) != "hit" {
				t.Fatalf("status %d, X-Cache %q: want a 200 hit", resp.StatusCode, resp.Header.Get(cacheHeader))
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close() // before the end: the connection is closed
			level, attrs := lines.accessLine(t)
			if got := attrs["status"].Int64(); got != 499 || level != slog.LevelDebug {
				t.Errorf("client gone mid-body: access line status=%d at %s (error %q), want 499 at DEBUG", got, level, attrs["error"])
			}
		})
	}
}
