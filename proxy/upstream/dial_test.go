package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
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

// TestGuardedDialerIPv6Literal: an allowed IPv6 literal without a port, as
// a URL's host gives it ("[::1]"), allows its ports 80 and 443 (not
// "[[::1]]:80"), and no other. The context is cancelled, so nothing is
// dialled: passing the guard shows as the cancellation.
func TestGuardedDialerIPv6Literal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, allowed := range []string{"[::1]", "[fd00::1]"} {
		dial := GuardedDialer([]string{allowed})
		host := strings.Trim(allowed, "[]")
		for port, pass := range map[string]bool{"80": true, "443": true, "5000": false} {
			conn, err := dial(ctx, "tcp", net.JoinHostPort(host, port))
			if err == nil {
				conn.Close()
				t.Fatalf("%s: dialled on a cancelled context", allowed)
			}
			if got := errors.Is(err, context.Canceled); got != pass {
				t.Errorf("allowed %s, dialling port %s: %v; want past the guard: %v", allowed, port, err, pass)
			}
		}
	}
}

// TestGuardProxy: a request the HTTP proxy would carry is refused before
// the proxy is asked unless the guard would dial its host (allowed, or
// public); one not proxied is left to the dial guard. No DNS is needed:
// allowed names are taken as they are, literals are not resolved.
func TestGuardProxy(t *testing.T) {
	proxyURL, _ := url.Parse("http://127.0.0.1:3128")
	g := NewGuard([]string{"registry.internal:5000", "minio.internal", "10.0.0.5:5000"}, nil)
	proxied := g.Proxy(func(*http.Request) (*url.URL, error) { return proxyURL, nil })
	for target, pass := range map[string]bool{
		"http://registry.internal:5000/v2/":   true,
		"https://minio.internal/bucket/blob":  true,
		"http://minio.internal/bucket/blob":   true,
		"http://8.8.8.8/x":                    true,
		"https://[2001:4860:4860::8888]/x":    true,
		"http://10.0.0.5:5000/v2/":            true,
		"http://10.0.0.5:5001/v2/":            false,
		"http://10.0.0.1/x":                   false,
		"http://169.254.169.254/latest":       false,
		"https://[fd00::1]:5000/x":            false,
		"http://100.64.0.1/x":                 false,
		"http://[::ffff:192.168.1.1]:80/x":    false,
		"http://0.0.0.0:5000/x":               false,
		"http://REGISTRY.internal:5000/v2/x":  true,
		"https://registry.internal:5000/path": true,
	} {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		got, err := proxied(req)
		if pass && (err != nil || got != proxyURL) {
			t.Errorf("%s: %v, %v; want the proxy", target, got, err)
		}
		if !pass && (err == nil || got != nil || !strings.Contains(err.Error(), "refusing to connect")) {
			t.Errorf("%s: %v, %v; want the guard's refusal", target, got, err)
		}
	}
	// Not proxied (NO_PROXY, loopback): no check here, the dial guard's turn.
	direct := g.Proxy(func(*http.Request) (*url.URL, error) { return nil, nil })
	if got, err := direct(httptest.NewRequest(http.MethodGet, "http://10.0.0.1/x", nil)); got != nil || err != nil {
		t.Errorf("not proxied: %v, %v; want nil, nil", got, err)
	}
	// The proxy function's own error is kept.
	bad := errors.New("invalid proxy")
	failing := g.Proxy(func(*http.Request) (*url.URL, error) { return nil, bad })
	if _, err := failing(httptest.NewRequest(http.MethodGet, "http://10.0.0.1/x", nil)); !errors.Is(err, bad) {
		t.Errorf("proxy function error: %v, want %v", err, bad)
	}
}

// TestGuardLearn: a learned address is allowed from then on, unless it is
// another upstream's.
func TestGuardLearn(t *testing.T) {
	g := NewGuard([]string{"a.internal:5000"}, []string{"a.internal:5001", "[fd00::1]"})
	for addr, want := range map[string]bool{"a.internal:5002": true, "A.internal:5003": true, "a.internal:5001": false, "[fd00::1]:443": false, "[fd00::1]:5000": true} {
		if got := g.learn(addr); got != want {
			t.Errorf("learn(%s) = %v, want %v", addr, got, want)
		}
		if got := g.allows(addr); got != want {
			t.Errorf("after learn(%s), allows = %v, want %v", addr, got, want)
		}
	}
}

// TestClientLearnsOwnRealm: the token realm of the upstream's own /v2/
// challenge is added to its guard if it is on the upstream's host name;
// a realm on another host, a ping answered after a redirect elsewhere,
// or a client without a guard, teach it nothing.
func TestClientLearnsOwnRealm(t *testing.T) {
	challenge := func(realm string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="s"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
	}
	// The token server is never there: the handshake fails after the
	// challenge, which is all that is looked at.
	for _, c := range []struct {
		name, realm string
		learned     string // "" for none
	}{
		{"another port", "http://127.0.0.1:9/token", "127.0.0.1:9"},
		{"no port", "https://127.0.0.1/token", "127.0.0.1:443"},
		{"another host", "http://localhost:9/token", ""},
		{"not a URL", "127.0.0.1:9", ""},
		{"another scheme", "ftp://127.0.0.1:9/token", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(challenge(c.realm))
			defer srv.Close()
			g := NewGuard(nil, nil)
			cl, err := New("registry.example", srv.URL, WithGuard(g))
			if err != nil {
				t.Fatal(err)
			}
			cl.handshake(t.Context(), "library/app")
			for _, a := range []string{"127.0.0.1:9", "127.0.0.1:443", "localhost:9"} {
				if got := g.allows(a); got != (a == c.learned) {
					t.Errorf("realm %s: allows %s = %v", c.realm, a, got)
				}
			}
		})
	}
	t.Run("after a redirect", func(t *testing.T) {
		elsewhere := httptest.NewServer(challenge("http://127.0.0.1:9/token"))
		defer elsewhere.Close()
		srv := httptest.NewServer(http.RedirectHandler(elsewhere.URL+"/v2/", http.StatusTemporaryRedirect))
		defer srv.Close()
		g := NewGuard(nil, nil)
		cl, err := New("registry.example", srv.URL, WithGuard(g))
		if err != nil {
			t.Fatal(err)
		}
		cl.handshake(t.Context(), "library/app")
		if g.allows("127.0.0.1:9") {
			t.Error("a realm named after a redirect was learned")
		}
	})
}

// TestGuardChecksEveryAddress: a host the guard does not allow is let
// through only if every address it resolves to is public; a DNS answer
// mixing a public and a private address is refused, whichever comes first.
// The resolver is faked, so nothing is resolved or dialled.
func TestGuardChecksEveryAddress(t *testing.T) {
	cases := []struct {
		name    string
		answer  []string
		allowed bool
	}{
		{"public only", []string{"93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"}, true},
		{"public then private", []string{"93.184.215.14", "10.0.0.1"}, false},
		{"public then loopback", []string{"93.184.215.14", "127.0.0.1"}, false},
		{"private then public", []string{"192.168.1.1", "93.184.215.14"}, false},
		{"public then metadata", []string{"93.184.215.14", "8.8.8.8", "169.254.169.254"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGuard([]string{"registry.example:443"}, nil)
			var asked []string
			g.lookup = func(_ context.Context, _, host string) ([]netip.Addr, error) {
				asked = append(asked, host)
				var as []netip.Addr
				for _, a := range tc.answer {
					as = append(as, netip.MustParseAddr(a))
				}
				return as, nil
			}
			addrs, err := g.check(t.Context(), "mixed.example:443")
			if len(asked) != 1 || asked[0] != "mixed.example" {
				t.Fatalf("resolver asked for %q, want [mixed.example]", asked)
			}
			if !tc.allowed {
				if err == nil {
					t.Fatalf("%v: allowed (addresses %v), want refused: one of them is not public", tc.answer, addrs)
				}
				if !strings.Contains(err.Error(), "not a public address") {
					t.Errorf("error %q does not say the address is not public", err)
				}
				// The HTTP proxy path applies the same check.
				req := httptest.NewRequest(http.MethodGet, "https://mixed.example/v2/", nil)
				proxy := g.Proxy(func(*http.Request) (*url.URL, error) { return url.Parse("http://proxy.example:3128") })
				if pu, err := proxy(req); err == nil {
					t.Errorf("HTTP proxy %v asked for a host resolving to %v, want refused", pu, tc.answer)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v: %v, want allowed", tc.answer, err)
			}
			if len(addrs) != len(tc.answer) || addrs[0] != netip.MustParseAddr(tc.answer[0]) {
				t.Errorf("checked addresses %v, want %v (the one dialled is the first)", addrs, tc.answer)
			}
		})
	}
}
