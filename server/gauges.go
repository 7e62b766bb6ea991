package server

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
)

// readyTimeout is how long a readiness lookup of the store may go
// unanswered before a scrape (or the status page) shows it not ready:
// what the others' probes of /readyz wait.
const readyTimeout = proxy.ReadyUnanswered

// gauges are the metrics that alerts compare against: the configured
// size limit, readiness as /readyz says it, and the index's writes (how
// long they hold its write lock, which every write waits for). They are
// read at scrape time.
func gauges(cfg config.Config, p *proxy.Proxy, ix *storage.Index) []prometheus.Collector {
	writes := func(name, help string, f func(storage.WriteTotals) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(ix.WriteTotals()) })
	}
	return []prometheus.Collector{
		writes("docker_mirror_index_commits_total", "Write transactions the index committed.",
			func(w storage.WriteTotals) float64 { return float64(w.Commits) }),
		writes("docker_mirror_index_pages_written_total", "Pages of the index file (of its page size, 4 KiB on most systems) its commits wrote.",
			func(w storage.WriteTotals) float64 { return float64(w.Pages) }),
		writes("docker_mirror_index_write_lock_seconds_total", "Time the index's write transactions held its write lock, which every other write waits for.",
			func(w storage.WriteTotals) float64 { return w.Held.Seconds() }),
		writes("docker_mirror_index_write_lock_cpu_seconds_total", "CPU time the threads holding the index's write lock used meanwhile: the rest of the time held is spent waiting (for the disk's syncs, or for a CPU).",
			func(w storage.WriteTotals) float64 { return w.CPU.Seconds() }),
		writes("docker_mirror_index_write_lock_page_faults_total", "Minor page faults the threads holding the index's write lock took meanwhile (the index file's pages first read through its mapping, fresh memory).",
			func(w storage.WriteTotals) float64 { return float64(w.Faults) }),
		writes("docker_mirror_index_slow_writes_total", "Index writes that held the write lock over 100 ms (each logged as a slow index write).",
			func(w storage.WriteTotals) float64 { return float64(w.Slow) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_store_max_size_bytes",
			Help: "The store's size limit (max_size); 0: no limit.",
		}, func() float64 { return float64(cfg.MaxSize) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_ready",
			Help: "1 while the index can be read and the store answered its last lookup (what /readyz checks, not waited for: 0 once a lookup has gone unanswered for over 5 s; a full store is docker_mirror_store_full), else 0.",
		}, func() float64 {
			// The last answer, not waited for: a store that hangs
			// would hold the scrape, and every metric with it, past
			// Prometheus' timeout.
			if p.ReadyLast(context.Background(), readyTimeout) != nil {
				return 0
			}
			return 1
		}),
	}
}
