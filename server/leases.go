package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
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
// docker_mirror_cluster_leases_supported). Elsewhere there are none:
// replicas that disagree on the membership may then fetch a blob twice.
// A probe that fails (the store unreachable) is made again in the
// background of the blob fetches that follow (lateLeases).
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
	l := lease.New(objects, cfg.Cluster.Self, append([]lease.Option{lease.WithClock(o.now), lease.WithLogger(o.log), lease.WithHolderDown(c.Down)}, o.leaseOptions...)...)
	m.Register(l.Collectors()...)
	sum := sha256.Sum256([]byte(cfg.Cluster.Self))
	probe := func(ctx context.Context) (bool, error) {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		ok, err := lease.Probe(pctx, objects, "records/leases/probe/"+hex.EncodeToString(sum[:8]))
		if err != nil {
			o.log.Warn("cluster blob leases", "supported", false, "error", err, "retry", "at a blob fetch, once a minute")
			return false, err
		}
		o.log.Info("cluster blob leases", "supported", ok, "why", "probed If-None-Match: * and If-Match on PUT")
		if !ok {
			return false, nil
		}
		supported.Set(1)
		if err := l.DropLeftovers(pctx); err != nil {
			// Those left are taken over at their expiry, as before.
			o.log.Warn("removing the blob fetch leases of this replica's former run, or long dead", "error", err)
		}
		return true, nil
	}
	ok, err := probe(ctx)
	switch {
	case err != nil:
		// The store could not be reached: probed again in the background
		// of the blob fetches that follow, not left without leases until a
		// restart.
		return []proxy.Option{proxy.WithBlobLeases(&lateLeases{leases: l, probe: probe, now: o.now})}
	case !ok:
		return nil
	}
	return []proxy.Option{proxy.WithBlobLeases(l)}
}

// lateProbeEvery is how often a replica whose start could not probe the
// store for conditional writes probes it again, in the background of a blob
// fetch.
const lateProbeEvery = time.Minute

// lateLeases are the leases of a replica whose start could not tell
// whether the store honours conditional writes (the bucket unreachable).
// The proxy probes again in the background when a blob fetch finds it due
// (at most once per lateProbeEvery, never while another probes); until a
// probe tells, and if it tells there are none, blobs are fetched without
// a lease (lease.ErrUnsupported).
type lateLeases struct {
	leases *lease.Leases
	probe  func(context.Context) (bool, error)
	now    func() time.Time

	mu      sync.Mutex
	known   bool // a probe told: ok says what
	ok      bool
	probing bool
	next    time.Time // the next probe, if not known
}

var _ proxy.LateBlobLeases = (*lateLeases)(nil)

// Take implements proxy.BlobLeases.
func (l *lateLeases) Take(ctx context.Context, name string) (*lease.Held, string, time.Time, error) {
	l.mu.Lock()
	ok := l.known && l.ok
	l.mu.Unlock()
	if !ok {
		return nil, "", time.Time{}, lease.ErrUnsupported
	}
	return l.leases.Take(ctx, name)
}

// ProbeDue implements proxy.LateBlobLeases.
func (l *lateLeases) ProbeDue() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.due()
}

func (l *lateLeases) due() bool { return !l.known && !l.probing && !l.now().Before(l.next) }

// Probe implements proxy.LateBlobLeases.
func (l *lateLeases) Probe(ctx context.Context) {
	l.mu.Lock()
	if !l.due() {
		l.mu.Unlock()
		return
	}
	l.probing = true
	l.mu.Unlock()
	ok, err := l.probe(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.probing = false
	if err != nil {
		l.next = l.now().Add(lateProbeEvery)
		return
	}
	l.known, l.ok = true, ok
}
