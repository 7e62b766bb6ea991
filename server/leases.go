package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/docker-mirror/docker-mirror/cluster"
	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
)

// WithLeaseObjects keeps a cluster's blob fetch leases in objects instead
// of the S3 bucket the configuration names, with opts (tests: a fake S3
// on a filesystem store, a clock).
func WithLeaseObjects(objects lease.Objects, opts ...lease.Option) Option {
	return func(o *options) { o.leaseObjects, o.leaseOptions = objects, opts }
}

// probeTimeout bounds the start's probe of conditional writes.
const probeTimeout = 30 * time.Second

// newLeases returns the proxy option that makes a cluster's replicas take
// a lease before fetching a blob from the upstream, where the store
// honours conditional writes (probed now: logged, and the gauge
// docker_mirror_cluster_leases_supported). Elsewhere, or if the probe
// fails, there are none: replicas that disagree on the membership may
// then fetch a blob twice.
func newLeases(ctx context.Context, cfg config.Config, o options, m *metrics.Metrics, c *cluster.Cluster) []proxy.Option {
	supported := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "docker_mirror_cluster_leases_supported",
		Help: "1 if the shared store honours conditional writes and replicas take a lease before fetching a blob from the upstream, 0 if not.",
	})
	m.Register(supported)
	objects := o.leaseObjects
	if objects == nil {
		driver, params := cfg.StorageDriver()
		if driver != "s3aws" {
			o.log.Info("cluster blob leases", "supported", false, "why", "only on S3")
			return nil
		}
		s3, err := lease.NewS3(params)
		if err != nil {
			o.log.Warn("cluster blob leases", "supported", false, "error", err)
			return nil
		}
		objects = s3
	}
	sum := sha256.Sum256([]byte(cfg.Cluster.Self))
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	ok, err := lease.Probe(pctx, objects, "records/leases/probe/"+hex.EncodeToString(sum[:8]))
	if err != nil {
		o.log.Warn("cluster blob leases", "supported", false, "error", err)
		return nil
	}
	o.log.Info("cluster blob leases", "supported", ok, "why", "probed If-None-Match: * and If-Match on PUT")
	if !ok {
		return nil
	}
	supported.Set(1)
	l := lease.New(objects, cfg.Cluster.Self, append([]lease.Option{lease.WithClock(o.now), lease.WithLogger(o.log), lease.WithHolderDown(c.Down)}, o.leaseOptions...)...)
	if err := l.DropLeftovers(pctx); err != nil {
		// Those left are taken over at their expiry, as before.
		o.log.Warn("removing the blob fetch leases of this replica's former run, or long dead", "error", err)
	}
	m.Register(l.Collectors()...)
	return []proxy.Option{proxy.WithBlobLeases(l)}
}
