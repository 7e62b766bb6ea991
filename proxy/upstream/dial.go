package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// GuardedDialer returns a DialContext for upstream transports that
// connects to the allowed addresses (the host[:port] of configured
// upstream URLs; without a port, 80 and 443) as they are, and to any other
// host only if every address it resolves to is public. So no redirect,
// token realm or manifest field can make the proxy reach a loopback,
// private or link-local address that the configuration does not name. The
// address checked is the one dialled, so DNS rebinding cannot slip past.
func GuardedDialer(allowed []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	ok := map[string]bool{}
	for _, a := range allowed {
		if _, _, err := net.SplitHostPort(a); err == nil {
			ok[a] = true
			continue
		}
		ok[net.JoinHostPort(a, "80")] = true
		ok[net.JoinHostPort(a, "443")] = true
	}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if ok[addr] {
			return d.DialContext(ctx, network, addr)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
		for _, ip := range addrs {
			if !isPublic(ip) {
				return nil, fmt.Errorf("refusing to connect to %s (%s): not a configured upstream, and not a public address", addr, ip)
			}
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("no address for %s", host)
		}
		return d.DialContext(ctx, network, net.JoinHostPort(addrs[0].String(), port))
	}
}

// cgnat is the carrier-grade NAT range, private in practice.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func isPublic(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip)
}
