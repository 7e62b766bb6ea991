package server

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/docker-mirror/docker-mirror/cluster"
	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/metrics"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
)

// clusterEvery is how often the peers are probed and peers_dns resolved
// again.
const clusterEvery = 5 * time.Second

// WithClusterOptions adds options to the cluster a configuration with
// cluster.self makes (tests inject a resolver or a clock).
func WithClusterOptions(opts ...cluster.Option) Option {
	return func(o *options) { o.clusterOptions = append(o.clusterOptions, opts...) }
}

// newCluster makes the cluster cfg describes (nil without one) and the
// proxy options that route misses through it; with client auth, the
// shared secret lets replicas pull from each other; with a certificate
// (certs), the replicas' connections to each other trust it
// (certReloader.peerTLS).
func newCluster(cfg config.Config, o options, m *metrics.Metrics, auth *access.File, certs *certReloader) (*cluster.Cluster, []proxy.Option, error) {
	cc := cfg.Cluster
	if !cc.Enabled() {
		return nil, nil, nil
	}
	opts := []cluster.Option{cluster.WithClock(o.now), cluster.WithLogger(o.log)}
	if certs != nil {
		t := cluster.DefaultTransport()
		t.TLSClientConfig = certs.peerTLS()
		opts = append(opts, cluster.WithTransport(t))
	}
	if cc.PeersDNS != "" {
		host, port, err := net.SplitHostPort(cc.PeersDNS)
		if err != nil {
			return nil, nil, fmt.Errorf("cluster.peers_dns: %w", err)
		}
		opts = append(opts, cluster.WithPeersDNS(host, port))
	}
	if cc.SecretFile != "" {
		b, err := os.ReadFile(cc.SecretFile)
		if err != nil {
			return nil, nil, fmt.Errorf("cluster.secret_file: %w", err)
		}
		secret := strings.TrimRight(string(b), "\r\n")
		if secret == "" {
			return nil, nil, fmt.Errorf("cluster.secret_file: %s is empty", cc.SecretFile)
		}
		opts = append(opts, cluster.WithSecret(secret))
	}
	c, err := cluster.New(cc.Self, cc.Peers, append(opts, o.clusterOptions...)...)
	if err != nil {
		return nil, nil, err
	}
	m.Register(c.Collectors()...)
	popts := []proxy.Option{proxy.WithPeers(c)}
	if auth != nil {
		level, err := access.ParseLevel(cmp.Or(cfg.Auth.Metrics, "users"))
		if err != nil {
			return nil, nil, err
		}
		popts = append(popts, proxy.WithAccess(c.TrustPeers(auth), level))
	}
	return c, popts, nil
}

// runCluster keeps the cluster's view of its peers current until ctx
// ends.
func (s *Server) runCluster(ctx context.Context) {
	if s.Cluster == nil {
		return
	}
	s.opts.log.Info("cluster member", "self", s.Cluster.Self(), "peers", s.cfg.Cluster.Peers, "peers_dns", s.cfg.Cluster.PeersDNS)
	s.background.Go(func() {
		t := time.NewTicker(clusterEvery)
		defer t.Stop()
		s.Cluster.Run(ctx, t.C)
	})
}
