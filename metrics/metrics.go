// Package metrics defines docker-mirror's Prometheus metrics, registered on
// a registry of their own (no global state), and instruments the HTTP
// transport to the upstreams.
package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the proxy's metrics.
type Metrics struct {
	registry *prometheus.Registry

	// Requests counts client requests by route, method and status.
	Requests *prometheus.CounterVec
	// RequestDuration observes client request durations by route.
	RequestDuration *prometheus.HistogramVec
	// Cache counts manifest and blob answers by kind and result (hit,
	// miss, revalidated, stale).
	Cache *prometheus.CounterVec
	// ServedBytes counts body bytes sent to clients by route.
	ServedBytes *prometheus.CounterVec
	// UpstreamRequests counts upstream requests by upstream and status
	// ("error" when no answer came).
	UpstreamRequests *prometheus.CounterVec
	// UpstreamBytes counts body bytes received from each upstream.
	UpstreamBytes *prometheus.CounterVec
	// UpstreamErrors counts failed upstream requests by upstream and
	// reason (network, status, digest, size).
	UpstreamErrors *prometheus.CounterVec
	// RateLimitRemaining and RateLimitLimit are the upstream's last
	// ratelimit-remaining and ratelimit-limit headers (Docker Hub).
	RateLimitRemaining *prometheus.GaugeVec
	RateLimitLimit     *prometheus.GaugeVec
	// FillsInProgress counts upstream fills running, by kind.
	FillsInProgress *prometheus.GaugeVec
	// FillDuration observes fill durations by kind and result.
	FillDuration *prometheus.HistogramVec
	// ReferrersFetched counts the supply-chain artifacts fills fetched
	// from the upstreams with the images, by kind: referrer (listed by
	// the referrers API or the fallback tag), sig, att, sbom (cosign's
	// sha256-<hex>.sig, .att and .sbom tags).
	ReferrersFetched *prometheus.CounterVec
}

// New returns the metrics, registered with Go and process collectors on a
// new registry.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		registry: r,
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_http_requests_total", Help: "Client requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "docker_mirror_http_request_duration_seconds", Help: "Client request durations by route.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"route"}),
		Cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_cache_requests_total", Help: "Manifest, blob, referrers and tags list answers by kind and cache result (hit, miss, revalidated, stale); the status page's hit ratio counts manifests and blobs only.",
		}, []string{"kind", "result"}),
		ServedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_served_bytes_total", Help: "Body bytes sent to clients by route.",
		}, []string{"route"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_upstream_requests_total", Help: "Upstream requests by upstream and HTTP status (error: no answer).",
		}, []string{"upstream", "status"}),
		UpstreamBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_upstream_bytes_total", Help: "Body bytes received from each upstream.",
		}, []string{"upstream"}),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_upstream_errors_total", Help: "Failed upstream requests by upstream and reason (network, status, digest, size).",
		}, []string{"upstream", "reason"}),
		RateLimitRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "docker_mirror_upstream_ratelimit_remaining", Help: "The upstream's last ratelimit-remaining header.",
		}, []string{"upstream"}),
		RateLimitLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "docker_mirror_upstream_ratelimit_limit", Help: "The upstream's last ratelimit-limit header.",
		}, []string{"upstream"}),
		FillsInProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "docker_mirror_fills_in_progress", Help: "Upstream fills running, by kind (manifest, blob).",
		}, []string{"kind"}),
		FillDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "docker_mirror_fill_duration_seconds", Help: "Upstream fill durations by kind and result.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 9),
		}, []string{"kind", "result"}),
		ReferrersFetched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_referrers_fetched_total", Help: "Signatures, attestations and SBOMs fetched with the images, by kind (referrer, sig, att, sbom).",
		}, []string{"kind"}),
	}
	r.MustRegister(m.ReferrersFetched)
	r.MustRegister(m.Requests, m.RequestDuration, m.Cache, m.ServedBytes, m.UpstreamRequests, m.UpstreamBytes,
		m.UpstreamErrors, m.RateLimitRemaining, m.RateLimitLimit, m.FillsInProgress, m.FillDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds collectors to the metrics' registry, e.g. gauges read
// from the proxy's state at scrape time.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.registry.MustRegister(cs...) }

// Handler serves the metrics in the Prometheus format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// Transport instruments an upstream's HTTP transport: requests by status,
// body bytes received, network errors, and the rate-limit headers.
func (m *Metrics) Transport(upstream string, base http.RoundTripper) http.RoundTripper {
	return &transport{m: m, upstream: upstream, base: base}
}

type transport struct {
	m        *Metrics
	upstream string
	base     http.RoundTripper

	mu     sync.Mutex
	seen   int         // rate-limit figures noted so far
	expiry *time.Timer // ends the last ones once their window has passed
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		t.m.UpstreamRequests.WithLabelValues(t.upstream, "error").Inc()
		// A request the mirror cancelled (its client hung up) is no
		// failure of the upstream; one past its deadline is.
		if !errors.Is(req.Context().Err(), context.Canceled) {
			t.m.UpstreamErrors.WithLabelValues(t.upstream, "network").Inc()
		}
		return nil, err
	}
	t.m.UpstreamRequests.WithLabelValues(t.upstream, statusLabel(resp.StatusCode)).Inc()
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
		t.m.UpstreamErrors.WithLabelValues(t.upstream, "status").Inc()
	}
	if v, window, ok := upstream.ParseRateLimit(resp.Header.Get("Ratelimit-Remaining")); ok {
		limit, _, hasLimit := upstream.ParseRateLimit(resp.Header.Get("Ratelimit-Limit"))
		t.noteRateLimit(float64(v), float64(limit), hasLimit, window)
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, c: t.m.UpstreamBytes.WithLabelValues(t.upstream)}
	return resp, nil
}

// statusLabel is an upstream's status as a metric label: one outside the
// defined classes (net/http takes 100 to 999) is "other", so that an
// upstream (a CDN, a broken proxy before it) adds no series of its own.
func statusLabel(s int) string {
	if s < 100 || s > 599 {
		return "other"
	}
	return strconv.Itoa(s)
}

// noteRateLimit records the upstream's rate-limit figures, and removes
// them once their window (0: none given) has passed without newer ones:
// a mirror that then asks the upstream nothing (it serves hits, or holds
// off after a 429) would otherwise show "no pulls left"
// (DockerMirrorRateLimited) for ever, long after the allowance refilled.
func (t *transport) noteRateLimit(remaining, limit float64, hasLimit bool, window time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m.RateLimitRemaining.WithLabelValues(t.upstream).Set(remaining)
	if hasLimit {
		t.m.RateLimitLimit.WithLabelValues(t.upstream).Set(limit)
	}
	t.seen++
	if t.expiry != nil {
		t.expiry.Stop()
		t.expiry = nil
	}
	if window <= 0 {
		return
	}
	seen := t.seen
	t.expiry = time.AfterFunc(window, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.seen == seen { // none newer
			t.m.RateLimitRemaining.DeleteLabelValues(t.upstream)
			t.m.RateLimitLimit.DeleteLabelValues(t.upstream)
		}
	})
}

type countingBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.Add(float64(n))
	return n, err
}
