package lifecycle

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the lifecycle's Prometheus metrics. Register them with the
// server's metrics: m.Register(lm.Collectors()...).
type Metrics struct {
	// Evictions counts images evicted (docker_mirror_evictions_total).
	Evictions prometheus.Counter
	// Removed counts blobs and manifests removed from the store, by kind
	// (blob, manifest) and reason: evict (collected after an eviction),
	// gc (unreferenced), verify (corrupt or missing).
	Removed *prometheus.CounterVec
	// FreedBytes counts the bytes removed from the store, by reason.
	FreedBytes *prometheus.CounterVec
	// Corrupt counts corrupt content found by verification, by kind.
	Corrupt *prometheus.CounterVec
	// Runs counts runs by operation (evict, collect, verify) and result
	// (ok, error).
	Runs *prometheus.CounterVec
}

// NewMetrics returns the lifecycle's metrics, not yet registered.
func NewMetrics() *Metrics {
	return &Metrics{
		Evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "docker_mirror_evictions_total", Help: "Cached images evicted (least recently pulled, or not pulled for --evict-after).",
		}),
		Removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_removed_content_total", Help: "Blobs and manifests removed from the store, by kind and reason (evict, gc, verify).",
		}, []string{"kind", "reason"}),
		FreedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_freed_bytes_total", Help: "Bytes removed from the store, by reason (evict, gc, verify).",
		}, []string{"reason"}),
		Corrupt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_corrupt_content_total", Help: "Stored blobs and manifests found corrupt (not matching their digest) by verification, by kind.",
		}, []string{"kind"}),
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_lifecycle_runs_total", Help: "Cache lifecycle runs by operation (evict, collect, verify) and result (ok, error).",
		}, []string{"operation", "result"}),
	}
}

// Collectors returns the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Evictions, m.Removed, m.FreedBytes, m.Corrupt, m.Runs}
}

// observe records a run's report.
func (m *Metrics) observe(op, reason string, r Report, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.Runs.WithLabelValues(op, result).Inc()
	m.Corrupt.WithLabelValues("blob").Add(float64(r.CorruptBlobs))
	m.Corrupt.WithLabelValues("manifest").Add(float64(r.CorruptManifests))
	if r.DryRun {
		return
	}
	m.Evictions.Add(float64(r.ImagesEvicted))
	m.Removed.WithLabelValues("blob", reason).Add(float64(r.BlobsRemoved))
	m.Removed.WithLabelValues("manifest", reason).Add(float64(r.ManifestsRemoved))
	m.FreedBytes.WithLabelValues(reason).Add(float64(r.BytesFreed))
}
