package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	dto "github.com/prometheus/client_model/go"
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
