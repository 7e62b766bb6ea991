package server

import (
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
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
	scrape := func() string {
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	got := scrape()
	for _, want := range []string{"\ndocker_mirror_store_max_size_bytes 1.048576e+07\n", "\ndocker_mirror_ready 1\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q", strings.TrimSpace(want))
		}
	}
	// An index that cannot be read: not ready.
	if err := srv.Index.Close(); err != nil {
		t.Fatal(err)
	}
	if got := scrape(); !strings.Contains(got, "\ndocker_mirror_ready 0\n") {
		t.Errorf("with the index closed: %s", grepReady(got))
	}
}

func grepReady(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "docker_mirror_ready") {
			return l
		}
	}
	return "no docker_mirror_ready"
}
