package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Guard is the dial guard of one upstream's transport. It connects to the
// addresses it allows as they are: the upstream's own host[:port] (without
// a port, 80 and 443), the environment's HTTP proxy, and the token realm
// the upstream's own /v2/ challenge names on its own host name (see
// Client). Any other host it connects to only if every address it resolves
// to is public. So no redirect, token realm or manifest field can make the
// proxy reach a loopback, private or link-local address the configuration
// does not name for this upstream, another configured upstream's included.
// The address checked is the one dialled, so DNS rebinding cannot slip
// past. With an HTTP proxy, Proxy applies the same rule to the request's
// host before the proxy is asked.
type Guard struct {
	dialer *net.Dialer

	mu      sync.RWMutex
	allowed map[string]bool // host:port, lower case
	// others are the addresses of the other upstreams: a realm learned from
	// a challenge never adds them, so one upstream cannot name another as
	// its token server.
	others map[string]bool
	// lookup resolves a host; net.DefaultResolver's, replaced in tests.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// warm holds the connections opened ahead of the requests that will
	// need them (Warm).
	warm warmConns
	// proxied: the transport may send requests through an HTTP proxy
	// (Proxy), so it may never dial the upstream itself: nothing is
	// opened ahead.
	proxied atomic.Bool
}

// NewGuard returns a guard allowing the addresses in allowed (host[:port])
// and learning no realm that is one of others (host[:port]).
func NewGuard(allowed, others []string) *Guard {
	g := &Guard{
		dialer:  &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
		allowed: map[string]bool{},
		others:  map[string]bool{},
		lookup:  net.DefaultResolver.LookupNetIP,
	}
	for _, a := range allowed {
		for _, hp := range hostPorts(a) {
			g.allowed[hp] = true
		}
	}
	for _, a := range others {
		for _, hp := range hostPorts(a) {
			g.others[hp] = true
		}
	}
	return g
}

// GuardedDialer returns the DialContext of a guard allowing allowed (see
// Guard), for transports that learn no realm.
func GuardedDialer(allowed []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return NewGuard(allowed, nil).DialContext
}

// hostPorts is the host:port forms of a URL host: itself if it has a port,
// else its ports 80 and 443. An IPv6 literal loses its brackets before
// JoinHostPort adds them again.
func hostPorts(a string) []string {
	a = strings.ToLower(a)
	if _, _, err := net.SplitHostPort(a); err == nil {
		return []string{a}
	}
	h := strings.TrimSuffix(strings.TrimPrefix(a, "["), "]")
	return []string{net.JoinHostPort(h, "80"), net.JoinHostPort(h, "443")}
}

// learn allows addr (host:port), unless it is another upstream's.
func (g *Guard) learn(addr string) bool {
	addr = strings.ToLower(addr)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.others[addr] {
		return false
	}
	g.allowed[addr] = true
	return true
}

func (g *Guard) allows(addr string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.allowed[strings.ToLower(addr)]
}

// check returns nil for an allowed addr, else the addresses addr's host
// resolves to if every one is public.
func (g *Guard) check(ctx context.Context, addr string) ([]netip.Addr, error) {
	if g.allows(addr) {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := g.lookup(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	for _, ip := range addrs {
		if !isPublic(ip) {
			return nil, fmt.Errorf("refusing to connect to %s (%s): not this upstream's address, and not a public address", addr, ip)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no address for %s", host)
	}
	return addrs, nil
}

// DialContext connects to addr if the guard allows it: an allowed address
// as it is, another at the public address its host resolved to. A
// connection to addr opened ahead (Warm) and still open is handed out
// first. The connection knows whether the transport holds it idle (Warm
// counts those).
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network == "tcp" {
		if c := g.warm.take(addr); c != nil {
			return g.warm.track(addr, c), nil
		}
	}
	c, err := g.connect(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return g.warm.track(addr, c), nil
}

// connect is DialContext without the connections opened ahead.
func (g *Guard) connect(ctx context.Context, network, addr string) (net.Conn, error) {
	addrs, err := g.check(ctx, addr)
	if err != nil {
		return nil, err
	}
	if addrs == nil {
		return g.dialer.DialContext(ctx, network, addr)
	}
	_, port, _ := net.SplitHostPort(addr)
	return g.dialer.DialContext(ctx, network, net.JoinHostPort(addrs[0].String(), port))
}

// Proxy wraps a transport's Proxy function: a request the HTTP proxy would
// carry goes on only if the guard would let it be dialled (an allowed
// address, or a host resolving to public addresses only here). The
// connection then goes to the proxy, so the dial guard never sees where
// the request is going; without this, a redirect could reach through the
// proxy whatever the proxy reaches. A request not proxied is left to
// DialContext.
func (g *Guard) Proxy(next func(*http.Request) (*url.URL, error)) func(*http.Request) (*url.URL, error) {
	if next != nil {
		g.proxied.Store(true)
	}
	return func(req *http.Request) (*url.URL, error) {
		if next == nil {
			return nil, nil
		}
		pu, err := next(req)
		if err != nil || pu == nil {
			return pu, err
		}
		if _, err := g.check(req.Context(), hostPort(req.URL)); err != nil {
			return nil, fmt.Errorf("not asking the HTTP proxy for %s: %w", req.URL.Redacted(), err)
		}
		return pu, nil
	}
}

// hostPort is the address a URL is reached at, its scheme's port if it
// names none.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// cgnat is the carrier-grade NAT range, private in practice.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func isPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip)
}
