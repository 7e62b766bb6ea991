package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// The rate-limit figures last their window ("0;w=21600": six hours) and
// no longer: a mirror that asks the upstream nothing more (its pulls are
// hits, or it holds off after a 429) no longer says "no pulls left" for
// ever, firing DockerMirrorRateLimited long after the allowance refilled.
// Newer figures start the window again.
func TestRateLimitFiguresExpireWithTheirWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New()
		remaining := "0;w=21600"
		base := roundTripper(func(r *http.Request) (*http.Response, error) {
			h := http.Header{}
			h.Set("Ratelimit-Remaining", remaining)
			h.Set("Ratelimit-Limit", "100;w=21600")
			return &http.Response{StatusCode: http.StatusTooManyRequests, Header: h, Body: http.NoBody, Request: r}, nil
		})
		client := &http.Client{Transport: m.Transport("docker.io", base)}
		pull := func() {
			t.Helper()
			resp, err := client.Get("http://registry.test/v2/library/x/manifests/1")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		series := func() int {
			ch := make(chan prometheus.Metric, 4)
			m.RateLimitRemaining.Collect(ch)
			m.RateLimitLimit.Collect(ch)
			return len(ch)
		}
		pull()
		var g dto.Metric
		if err := m.RateLimitRemaining.WithLabelValues("docker.io").Write(&g); err != nil || g.GetGauge().GetValue() != 0 || series() != 2 {
			t.Fatalf("after a 429: remaining %v (%v), %d series; want 0 and both", g.GetGauge().GetValue(), err, series())
		}
		time.Sleep(5 * time.Hour)
		remaining = "3;w=21600"
		pull() // newer figures: a new window
		time.Sleep(5 * time.Hour)
		synctest.Wait()
		if n := series(); n != 2 {
			t.Fatalf("5 hours into the newer figures' window: %d series, want 2", n)
		}
		time.Sleep(time.Hour + time.Second)
		synctest.Wait()
		if n := series(); n != 0 {
			t.Errorf("past the window: %d rate-limit series, want none", n)
		}
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// An upstream's status outside the defined classes (a CDN's or a broken
// proxy's 600 to 999) counts as "other": each would add series of its
// own to docker_mirror_upstream_requests_total, as the mirror's own
// answers' odd statuses do not to http_requests_total.
func TestUpstreamOddStatusesShareASeries(t *testing.T) {
	m := New()
	status := 0
	base := roundTripper(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: status, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
	client := &http.Client{Transport: m.Transport("docker.io", base)}
	for _, status = range []int{600, 777, 999, 200} {
		resp, err := client.Get("http://registry.test/v2/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	ch := make(chan prometheus.Metric, 8)
	m.UpstreamRequests.Collect(ch)
	if n := len(ch); n != 2 {
		t.Errorf("%d upstream_requests_total series, want 2 (200 and other)", n)
	}
	if got := counterValue(t, m.UpstreamRequests.WithLabelValues("docker.io", "other")); got != 3 {
		t.Errorf(`upstream_requests_total{status="other"} = %v, want 3`, got)
	}
}
