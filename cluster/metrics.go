package cluster

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the cluster's Prometheus metrics.
type Metrics struct {
	// forwarded counts the misses sent to their owner, by kind (blob: a
	// client's blob, streamed through; manifest; fill: a blob the
	// background mirror needs; revalidate: a stale tag) and result (ok: the owner answered;
	// fallback: fetched here after the owner failed; resumed: a blob
	// whose owner failed mid-body, finished through the next replica).
	forwarded *prometheus.CounterVec
	// served counts the requests other replicas forwarded here.
	served prometheus.Counter
	// peerUp is 1 for a peer taking its share of misses, 0 for one down.
	peerUp *prometheus.GaugeVec
}

func newMetrics() *Metrics {
	return &Metrics{
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_mirror_cluster_forwarded_total",
			Help: "Misses sent to the replica that owns them, by kind (blob, manifest, fill, revalidate: a stale tag) and result (ok, fallback: fetched here after the owner failed, resumed: finished through another replica after the owner failed mid-body).",
		}, []string{"kind", "result"}),
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "docker_mirror_cluster_served_for_peers_total",
			Help: "Requests other replicas forwarded to this one (served here, never forwarded again).",
		}),
		peerUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "docker_mirror_cluster_peer_up",
			Help: "1 for a peer replica that takes its share of misses, 0 for one marked down (a failed connection or probe).",
		}, []string{"peer"}),
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.forwarded, m.served, m.peerUp}
}

func (m *Metrics) count(kind, result string) { m.forwarded.WithLabelValues(kind, result).Inc() }
