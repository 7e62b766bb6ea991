package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A request to the upstream that the mirror itself cancels (its client
// hung up) is no failure of the upstream: it does not count in
// docker_mirror_upstream_errors_total, which DockerMirrorUpstreamErrors
// compares with the requests. One that fails does.
func TestTransportCancelledIsNoUpstreamError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	m := New()
	client := &http.Client{Transport: m.Transport("docker.io", http.DefaultTransport)}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, srv.URL+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v", err)
	}
	if got := counterValue(t, m.UpstreamErrors.WithLabelValues("docker.io", "network")); got != 0 {
		t.Errorf("a request the mirror cancelled: upstream_errors_total{reason=network} = %v, want 0", got)
	}
	srv.Close()
	req, err = http.NewRequestWithContext(t.Context(), http.MethodHead, srv.URL+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Do(req); err == nil {
		t.Fatal("a closed upstream answered")
	}
	if got := counterValue(t, m.UpstreamErrors.WithLabelValues("docker.io", "network")); got != 1 {
		t.Errorf("a request the upstream failed: upstream_errors_total{reason=network} = %v, want 1", got)
	}
}
