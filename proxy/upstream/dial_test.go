package upstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// TestIsPublic: every range the proxy must not reach unless configured is
// refused, in its IPv4 and IPv4-mapped IPv6 forms; public addresses pass.
// No address is dialled.
func TestIsPublic(t *testing.T) {
	refused := []string{
		// RFC 1918, with their edges.
		"10.0.0.1", "10.255.255.255",
		"172.16.0.1", "172.31.255.255",
		"192.168.0.1", "192.168.255.255",
		// Carrier-grade NAT, 100.64.0.0/10.
		"100.64.0.0", "100.64.0.1", "100.127.255.255",
		// Link-local, including the cloud metadata address.
		"169.254.0.1", "169.254.169.254",
		"fe80::1", "febf:ffff::1",
		// Unique local, fc00::/7.
		"fc00::1", "fd00::1", "fdff:ffff::1",
		// Unspecified, loopback, broadcast.
		"0.0.0.0", "::", "127.0.0.1", "127.255.255.254", "::1", "255.255.255.255",
		// Multicast.
		"224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1",
		// IPv4-mapped IPv6 forms of the above.
		"::ffff:10.0.0.1", "::ffff:172.16.0.1", "::ffff:192.168.1.1",
		"::ffff:100.64.0.1", "::ffff:169.254.169.254", "::ffff:127.0.0.1",
		"::ffff:0.0.0.0", "::ffff:224.0.0.1",
	}
	public := []string{
		"8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700::1111", "::ffff:8.8.8.8",
		// Just outside the refused ranges.
		"9.255.255.255", "11.0.0.0",
		"172.15.255.255", "172.32.0.0",
		"192.167.255.255", "192.169.0.0",
		"100.63.255.255", "100.128.0.0",
		"169.253.255.255", "169.255.0.0",
		"fbff:ffff::1", "fec0::1",
	}
	for _, s := range refused {
		if isPublic(netip.MustParseAddr(s)) {
			t.Errorf("%s counted as public", s)
		}
	}
	for _, s := range public {
		if !isPublic(netip.MustParseAddr(s)) {
			t.Errorf("%s not counted as public", s)
		}
	}
}

// TestGuardedDialer: an allowed host:port is dialled as it is; any other
// address that is not public is refused without a connection being made.
// Two loopback listeners per case: the one dialled and another; each must
// receive exactly the connections the guard let through.
func TestGuardedDialer(t *testing.T) {
	type addrs struct{ target, other string } // "127.0.0.1:PORT"
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	cases := []struct {
		name    string
		allowed func(a addrs) []string
		dial    func(a addrs) string // address dialled, reaching target's port
		connect bool
	}{
		{"allowed host:port", func(a addrs) []string { return []string{a.other, a.target} },
			func(a addrs) string { return a.target }, true},
		{"nothing allowed", func(a addrs) []string { return nil },
			func(a addrs) string { return a.target }, false},
		{"another port of an allowed host", func(a addrs) []string { return []string{a.other} },
			func(a addrs) string { return a.target }, false},
		{"allowed host without port: only 80 and 443", func(a addrs) []string { return []string{"127.0.0.1"} },
			func(a addrs) string { return a.target }, false},
		{"allowed under another name", func(a addrs) []string { return []string{"localhost:" + port(a.target)} },
			func(a addrs) string { return a.target }, false},
		{"a name resolving to loopback", func(a addrs) []string { return []string{a.other} },
			func(a addrs) string { return "localhost:" + port(a.target) }, false},
		{"IPv4-mapped IPv6 loopback", func(a addrs) []string { return []string{a.other} },
			func(a addrs) string { return "[::ffff:127.0.0.1]:" + port(a.target) }, false},
		{"unspecified address", func(a addrs) []string { return []string{a.other} },
			func(a addrs) string { return "0.0.0.0:" + port(a.target) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target, other := listen(t), listen(t)
			a := addrs{target.Addr().String(), other.Addr().String()}
			conn, err := GuardedDialer(tc.allowed(a))(t.Context(), "tcp", tc.dial(a))
			if tc.connect {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				c, err := target.Accept()
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if c.RemoteAddr().String() != conn.LocalAddr().String() {
					t.Fatalf("the listener got a connection from %s, not the dialled one from %s", c.RemoteAddr(), conn.LocalAddr())
				}
			} else {
				if err == nil {
					conn.Close()
					t.Fatalf("dialled %s", tc.dial(a))
				}
				if !strings.Contains(err.Error(), "refusing to connect") {
					t.Fatalf("not the guard's refusal: %v", err)
				}
			}
			wantNoConnection(t, target)
			wantNoConnection(t, other)
		})
	}
}

// TestGuardedDialerPublic: a public address passes the guard, and an
// allowed host without port may be reached on 80 and 443. The context is
// cancelled beforehand, so nothing is dialled: the error must be the
// cancellation, not the guard's refusal.
func TestGuardedDialerPublic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dial := GuardedDialer([]string{"127.0.0.1"})
	for _, addr := range []string{"8.8.8.8:443", "[2001:4860:4860::8888]:443", "127.0.0.1:80", "127.0.0.1:443"} {
		conn, err := dial(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			t.Fatalf("%s: dialled on a cancelled context", addr)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want the cancellation (past the guard)", addr, err)
		}
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// wantNoConnection checks that no connection is waiting on l: a sentinel
// connection made now must be the first one accepted (the kernel queues
// completed connections in order, so one made before would come first).
func wantNoConnection(t *testing.T, l net.Listener) {
	t.Helper()
	sentinel, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer sentinel.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != sentinel.LocalAddr().String() {
		t.Fatalf("%s received a connection from %s that the guard should have refused", l.Addr(), c.RemoteAddr())
	}
}
