package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
)

// readyTimeout bounds the readiness check a scrape runs, so that a hung
// store cannot hold a scrape past Prometheus' own timeout.
const readyTimeout = 5 * time.Second

// gauges are the metrics that alerts compare against: the configured
// size limit and readiness as /readyz says it. They are read at scrape
// time.
func gauges(cfg config.Config, p *proxy.Proxy) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_store_max_size_bytes",
			Help: "The store's size limit (max_size); 0: no limit.",
		}, func() float64 { return float64(cfg.MaxSize) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "docker_mirror_ready",
			Help: "1 while the index can be read and the store answers a lookup (what /readyz checks; a full store is docker_mirror_store_full), else 0.",
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
			defer cancel()
			if p.Ready(ctx) != nil {
				return 0
			}
			return 1
		}),
	}
}
