// Package cluster makes several docker-mirror replicas that share one
// store act as one cache: each miss is owned by one replica, chosen by
// rendezvous (highest random weight) hashing of its key over the healthy
// replicas, and the others fetch it through the owner, whose shared
// download reaches the upstream once. A blob's key is its digest, a tag's
// is upstream/repo:tag.
//
// Membership is this replica (Self), the configured peers and the
// addresses a DNS name resolves to (a Kubernetes headless Service), read
// again on every Refresh. A peer is marked down as soon as a connection
// to it fails (or its answer breaks and its /readyz fails too) and up
// again when a probe of its /readyz succeeds; a down
// peer owns nothing, so the next one in hash order takes over. A replica
// never counts itself down.
package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Resolver returns the addresses of a host name (net.DefaultResolver's
// LookupHost in production).
type Resolver func(ctx context.Context, host string) ([]string, error)

// Cluster is one replica's view of the replicas sharing its store. Create
// it with New; it is safe for concurrent use.
type Cluster struct {
	self     string
	dnsName  string // host of peers_dns; "" without
	dnsPort  string
	scheme   string // of peers found by DNS: Self's
	secret   string
	resolve  Resolver
	now      func() time.Time
	log      *slog.Logger
	client   *http.Client
	probeTTL time.Duration
	metrics  *Metrics
	started  time.Time          // Self's Since: up since then
	cutProbe singleflight.Group // by peer URL: cutOff's probes

	mu    sync.Mutex
	peers map[string]*peer // by URL, self excluded
	// left holds when each peer the name stopped listing left (a pod
	// removed, or killed): it is down for a lease it held, so that the
	// others need not wait that lease out.
	left map[string]time.Time
}

// leftFor is how long a peer that left is remembered as down.
const leftFor = 10 * time.Minute

// peer is what this replica knows of another.
type peer struct {
	url    string
	dns    bool // found by DNS (dropped when the name stops listing it)
	static bool // configured
	up     bool
	since  time.Time
	err    string // why it is down
	// answers: down, it answered its probe (not ready), not unreachable.
	answers bool
	// refuses: its last probe's answer said it does not take this
	// replica's secret (secretRefusedHeader).
	refuses bool
	// downed is closed when the peer is marked down, and made anew when
	// it is up again: requests to it in flight end then (Cluster.do).
	downed chan struct{}
}

// shown is the peer's state as a status page tells it (up or
// secret refused; down, not ready or unreachable): since is when it last
// changed.
func (p *peer) shown() [3]bool { return [3]bool{p.up, p.up && p.refuses, !p.up && p.answers} }

// newPeer is a peer found up at now.
func newPeer(u string, now time.Time) *peer {
	return &peer{url: u, up: true, since: now, downed: make(chan struct{})}
}

// PeerState is a read-only view of one replica, for status pages.
type PeerState struct {
	// URL names the replica.
	URL string `json:"url"`
	// Self is this replica.
	Self bool `json:"self"`
	// Up: the replica takes its share of misses.
	Up bool `json:"up"`
	// Since is when its state (Up, and NotReady or SecretRefused as they
	// count) last changed (the start, for a replica never down).
	Since time.Time `json:"since"`
	// Error says why the replica is down.
	Error string `json:"error,omitempty"`
	// NotReady: down, but it answers (its /readyz said it is not ready:
	// its store full, starting, shutting down), not unreachable.
	NotReady bool `json:"not_ready,omitempty"`
	// SecretRefused: its last probe's answer said it does not take this
	// replica's cluster secret (another secret, or none): with client
	// auth on it refuses the requests forwarded to it, and its share of
	// misses is fetched twice.
	SecretRefused bool `json:"secret_refused,omitempty"`
	// Source is "self", "static" (configured) or "dns".
	Source string `json:"source"`
}

// Option configures New.
type Option func(*Cluster)

// WithPeersDNS adds the replicas a DNS name resolves to, at port (a
// Kubernetes headless Service); see Refresh.
func WithPeersDNS(name, port string) Option {
	return func(c *Cluster) { c.dnsName, c.dnsPort = name, port }
}

// WithResolver sets how peers_dns is resolved (default
// net.DefaultResolver.LookupHost).
func WithResolver(r Resolver) Option { return func(c *Cluster) { c.resolve = r } }

// WithClock sets the clock of the peers' state changes (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *Cluster) { c.now = now } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *Cluster) { c.log = l } }

// WithSecret sets the secret the replicas share: every request to a peer
// carries it, and a request carrying it passes TrustPeers' check.
func WithSecret(s string) Option { return func(c *Cluster) { c.secret = s } }

// WithTransport sets the transport to the peers (default: DefaultTransport).
func WithTransport(rt http.RoundTripper) Option {
	return func(c *Cluster) { c.client = &http.Client{Transport: rt} }
}

// WithProbeTimeout bounds one probe of a peer (default 5s).
func WithProbeTimeout(d time.Duration) Option { return func(c *Cluster) { c.probeTTL = d } }

// DefaultTransport is the transport to the peers: connections fail
// fast (a dead peer costs a client seconds, not minutes, before the next
// replica takes over); answers may take as long as the owner's own
// upstream fetch, which has its own timeout.
func DefaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil // replicas reach each other directly
	t.DialContext = (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 5 * time.Second
	t.MaxIdleConnsPerHost = 64
	// Forwarded blobs are passed on as they are: never decompressed.
	t.DisableCompression = true
	return t
}

// New returns the cluster seen from self, the URL the other replicas
// reach this one at, with the given peers (self among them is ignored).
// Every peer starts up: the first failed connection marks it down.
func New(self string, peers []string, opts ...Option) (*Cluster, error) {
	su, err := parseURL(self)
	if err != nil {
		return nil, fmt.Errorf("cluster self: %w", err)
	}
	c := &Cluster{
		self:     su,
		scheme:   strings.SplitN(su, "://", 2)[0],
		resolve:  net.DefaultResolver.LookupHost,
		now:      time.Now,
		log:      slog.Default(),
		probeTTL: 5 * time.Second,
		metrics:  newMetrics(),
		peers:    map[string]*peer{},
		left:     map[string]time.Time{},
	}
	for _, o := range opts {
		o(c)
	}
	c.started = c.now()
	if c.client == nil {
		c.client = &http.Client{Transport: DefaultTransport()}
	}
	// Never follow a peer's redirect: its answer is passed on as it is.
	c.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, p := range peers {
		pu, err := parseURL(p)
		if err != nil {
			return nil, fmt.Errorf("cluster peer: %w", err)
		}
		if pu == c.self {
			continue
		}
		c.peers[pu] = newPeer(pu, c.now())
		c.peers[pu].static = true
		c.metrics.peerUp.WithLabelValues(pu).Set(1)
	}
	return c, nil
}

// parseURL checks and normalises a replica's URL (lower-case scheme and
// host, no trailing slash), so that one replica has one name.
func parseURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		return "", fmt.Errorf("invalid URL %q (want http[s]://HOST:PORT)", s)
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host), nil
}

// Self is the URL of this replica.
func (c *Cluster) Self() string { return c.self }

// Collectors are the cluster's metrics, for the server's registry.
func (c *Cluster) Collectors() []prometheus.Collector { return c.metrics.collectors() }

// weight is the rendezvous weight of member for key: the first 8 bytes
// of SHA-256(member, key), so that every replica, in any process, ranks
// the members alike.
func weight(member, key string) uint64 {
	h := sha256.New()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// Rank orders members by their rendezvous weight for key, highest first:
// the first is the owner, the next takes over when it is down. A member
// leaving or joining moves only the keys it owned or takes.
func Rank(key string, members []string) []string {
	out := slices.Clone(members)
	w := make(map[string]uint64, len(out))
	for _, m := range out {
		w[m] = weight(m, key)
	}
	slices.SortFunc(out, func(a, b string) int {
		if c := cmp.Compare(w[b], w[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return out
}

// Owners returns the replicas to fetch key through, in hash order over
// the healthy ones (this replica always among them): the first is the
// owner.
func (c *Cluster) Owners(key string) []string {
	c.mu.Lock()
	members := []string{c.self}
	for u, p := range c.peers {
		if p.up {
			members = append(members, u)
		}
	}
	c.mu.Unlock()
	return Rank(key, members)
}

// Owns reports whether this replica owns key among the healthy ones.
func (c *Cluster) Owns(key string) bool { return c.Owners(key)[0] == c.self }

// Peers returns the state of every replica this one knows, itself
// first, the others by URL; nil on a nil Cluster (a replica alone).
func (c *Cluster) Peers() []PeerState {
	if c == nil {
		return nil // not part of a cluster
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []PeerState{{URL: c.self, Self: true, Up: true, Since: c.started, Source: "self"}}
	for _, u := range slices.Sorted(maps.Keys(c.peers)) {
		p := c.peers[u]
		src := "static"
		if !p.static {
			src = "dns"
		}
		out = append(out, PeerState{URL: u, Up: p.up, Since: p.since, Error: p.err, NotReady: !p.up && p.answers, SecretRefused: p.refuses, Source: src})
	}
	return out
}

// Down reports whether u is a peer this replica has marked down (a
// failed connection or probe), or one that left the DNS name: a lease it
// holds need not be waited out. u is normalised as the peers are: a lease
// names its holder as that replica's own configuration spells it.
func (c *Cluster) Down(u string) bool {
	if n, err := parseURL(u); err == nil {
		u = n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.peers[u]; ok {
		return !p.up
	}
	_, gone := c.left[u]
	return gone
}

// markDown takes a peer out of the hashing at once, e.g. after a failed
// connection; a probe brings it back. A request ended because the peer
// was marked down (do) tells nothing new of it: its state stays what
// marked it down (not ready, and why), not its own cancellation.
func (c *Cluster) markDown(u string, why error) {
	if errors.Is(why, errPeerMarkedDown) {
		return
	}
	c.setState(u, false, why)
}

// cutOff handles a peer's answer that broke mid-body: the peer is marked
// down only if its /readyz fails too. A healthy owner whose own download
// failed (its upstream cut it beyond resuming) breaks its answer as a
// dead one does; marked down, its every other answer in flight would be
// cut (do) and its share of misses fetched from the upstream again
// elsewhere until the next probe. One already down (its answer cut for
// that: it hung) is not probed again: that would hold the client for
// another probe timeout before its blob is resumed elsewhere. Answers
// cut at once (a rolling update breaks every client's blob together)
// share one probe of their owner.
func (c *Cluster) cutOff(ctx context.Context, u string, why error) {
	if c.Down(u) {
		return
	}
	c.cutProbe.Do(u, func() (any, error) {
		if up, err := c.probe(context.WithoutCancel(ctx), u); !up {
			c.markDown(u, fmt.Errorf("%w; then %w", why, err))
		}
		return nil, nil
	})
}

// setState records a peer's health; a change is logged and counted.
func (c *Cluster) setState(u string, up bool, why error) {
	c.mu.Lock()
	p, ok := c.peers[u]
	changed := ok && p.up != up
	if ok {
		was := p.shown()
		if changed {
			p.up = up
			if up {
				p.downed = make(chan struct{})
			} else {
				close(p.downed)
			}
		}
		p.err, p.answers = "", false
		if !up && why != nil {
			p.err, p.answers = why.Error(), errors.As(why, new(notReadyError))
		}
		if p.shown() != was {
			p.since = c.now()
		}
	}
	c.mu.Unlock()
	if !changed {
		return
	}
	if up {
		c.metrics.peerUp.WithLabelValues(u).Set(1)
		c.log.Info("cluster peer up", "peer", u)
	} else {
		c.metrics.peerUp.WithLabelValues(u).Set(0)
		c.log.Warn("cluster peer down: its share of misses goes to the next replica", "peer", u, "error", why)
	}
}

// errPeerMarkedDown ends a request to a peer marked down meanwhile.
var errPeerMarkedDown = errors.New("replica marked down while it was asked")

// do sends req to the peer u. Once u is marked down (its probe, or
// another request, failed), a request still waiting for its answer ends,
// and so does an answer a read of which waits on u for the probe timeout,
// bringing nothing, while u is still down (a body left unread meanwhile,
// its client slow, is not hung; up again, a pause is its upstream's): a
// replica that takes connections and answers nothing must not hold a
// client for ever; the caller goes on as for a failed connection (the
// next replica, or a fetch here). An answer still coming goes on: a
// replica shutting down (its listener closed, its probe refused) finishes
// the answers in flight, which the next replica would fetch from the
// upstream again. The answer's body must be closed.
func (c *Cluster) do(req *http.Request, u string) (*http.Response, error) {
	c.mu.Lock()
	var downed chan struct{}
	if p, ok := c.peers[u]; ok {
		downed = p.downed
	}
	c.mu.Unlock()
	if downed == nil {
		return c.client.Do(req) // this replica, over HTTP
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	done := make(chan struct{})
	var answered atomic.Bool
	var read atomic.Int64   // the body's bytes so far
	var waiting atomic.Bool // a read of the body waits on u
	go func() {
	wait:
		for {
			select {
			case <-downed:
			case <-done:
				return
			}
			// Cut once a read has waited on u for the probe timeout,
			// bringing nothing: a body not read meanwhile (its client
			// taking its bytes slowly) is not one u hangs.
			last, stalled := read.Load(), waiting.Load()
			for answered.Load() {
				t := time.NewTimer(c.probeTTL)
				select {
				case <-done:
					t.Stop()
					return
				case <-t.C:
				}
				// Up again: its answer pausing is no sign of a hang.
				if d, up := c.downedOf(u); up {
					downed = d
					continue wait
				}
				n, w := read.Load(), waiting.Load()
				if n == last && stalled && w {
					break
				}
				last, stalled = n, w
			}
			cancel(errPeerMarkedDown)
			return
		}
	}()
	end := sync.OnceFunc(func() { close(done); cancel(nil) })
	resp, err := c.client.Do(req.WithContext(ctx))
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errPeerMarkedDown) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		end()
		return nil, err
	}
	answered.Store(true)
	resp.Body = &endingBody{ReadCloser: resp.Body, read: &read, waiting: &waiting, end: end}
	return resp, nil
}

// downedOf returns the channel closed when the peer u is next marked
// down, and whether it is up now.
func (c *Cluster) downedOf(u string) (chan struct{}, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.peers[u]; ok && p.up {
		return p.downed, true
	}
	return nil, false
}

// endingBody counts the bytes read, tells when a read waits, and calls
// end once closed.
type endingBody struct {
	io.ReadCloser
	read    *atomic.Int64
	waiting *atomic.Bool
	end     func()
}

func (b *endingBody) Read(p []byte) (int, error) {
	b.waiting.Store(true)
	n, err := b.ReadCloser.Read(p)
	b.read.Add(int64(n))
	b.waiting.Store(false)
	return n, err
}

func (b *endingBody) Close() error {
	err := b.ReadCloser.Close()
	b.end()
	return err
}

// Probe asks every peer's /readyz, at once: a peer that answers 200 is
// up, any other answer or none marks it down.
func (c *Cluster) Probe(ctx context.Context) {
	c.mu.Lock()
	urls := slices.Collect(maps.Keys(c.peers))
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, u := range urls {
		wg.Go(func() {
			up, err := c.probe(ctx, u)
			c.setState(u, up, err)
		})
	}
	wg.Wait()
}

// probe asks one peer's /readyz.
func (c *Cluster) probe(ctx context.Context, u string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.probeTTL)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/readyz", nil)
	if err != nil {
		return false, err
	}
	if c.secret != "" {
		req.Header.Set(secretHeader, c.secret)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	c.noteSecret(u, resp.Header.Get(secretRefusedHeader) != "")
	if resp.StatusCode != http.StatusOK {
		return false, notReadyError(resp.StatusCode)
	}
	return true, nil
}

// noteSecret records whether the peer u refuses this replica's secret
// (refused), as its probe's answer said; a change to refused is logged.
func (c *Cluster) noteSecret(u string, refused bool) {
	c.mu.Lock()
	p, ok := c.peers[u]
	changed := ok && p.refuses != refused
	if ok {
		was := p.shown()
		p.refuses = refused
		if p.shown() != was {
			p.since = c.now()
		}
	}
	c.mu.Unlock()
	if changed && refused {
		c.log.Warn("cluster peer refuses this replica's cluster secret: requests forwarded to it are not trusted (with client auth, refused and fetched here)", "peer", u)
	}
}

// notReadyError is a probe's answer other than 200: the peer answers,
// but is not ready.
type notReadyError int

func (e notReadyError) Error() string { return fmt.Sprintf("/readyz answered %d", int(e)) }

// Refresh resolves peers_dns again: addresses it no longer lists are
// dropped, new ones join (up). Configured peers stay whatever DNS says. A
// failed lookup keeps the members found before: DNS trouble must not
// split the cluster.
func (c *Cluster) Refresh(ctx context.Context) error {
	if c.dnsName == "" {
		return nil
	}
	addrs, err := c.resolve(ctx, c.dnsName)
	if err != nil {
		return fmt.Errorf("cluster: resolving %s: %w", c.dnsName, err)
	}
	found := map[string]bool{}
	for _, a := range addrs {
		if u, err := parseURL(c.scheme + "://" + net.JoinHostPort(a, c.dnsPort)); err == nil && u != c.self {
			found[u] = true
		}
	}
	c.mu.Lock()
	var joined, left []string
	now := c.now()
	for u, at := range c.left {
		if found[u] || now.Sub(at) > leftFor {
			delete(c.left, u)
		}
	}
	for u, p := range c.peers {
		if p.dns && !found[u] {
			p.dns = false
			if !p.static {
				delete(c.peers, u)
				c.left[u] = now
				left = append(left, u)
			}
		}
	}
	for u := range found {
		p, ok := c.peers[u]
		if !ok {
			p = newPeer(u, c.now())
			c.peers[u] = p
			joined = append(joined, u)
		}
		p.dns = true
	}
	c.mu.Unlock()
	for _, u := range left {
		c.metrics.peerUp.DeleteLabelValues(u)
	}
	for _, u := range joined {
		c.metrics.peerUp.WithLabelValues(u).Set(1)
	}
	if len(joined) > 0 || len(left) > 0 {
		slices.Sort(joined)
		slices.Sort(left)
		c.log.Info("cluster membership changed", "name", c.dnsName, "joined", joined, "left", left)
	}
	return nil
}

// Run resolves the DNS members at start, then on every tick resolves them
// again and probes every peer, until ctx ends. The first probe waits for
// the first tick: replicas started together are not yet listening, and a
// peer that is really gone is marked down by the first connection to it
// anyway.
func (c *Cluster) Run(ctx context.Context, ticks <-chan time.Time) {
	for probe := false; ; probe = true {
		if err := c.Refresh(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("keeping the cluster members found before", "error", err)
		}
		if probe {
			c.Probe(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticks:
		}
	}
}
