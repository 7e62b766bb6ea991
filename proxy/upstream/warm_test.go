//go:build unix

package upstream

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
)

// countingServer is an upstream that counts the connections it accepts;
// first, if set, is called with the first one (before it is read).
func countingServer(t *testing.T, h http.Handler, first func(net.Conn)) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew && conns.Add(1) == 1 && first != nil {
			first(c)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

// warmGuard is a guard allowing addr whose Warm calls signal each
// connection parked (or failed) on the returned channel.
func warmGuard(addr string) (*Guard, chan struct{}) {
	var allowed []string
	if addr != "" {
		allowed = []string{addr}
	}
	g := NewGuard(allowed, nil)
	opened := make(chan struct{}, 64)
	g.warm.opened = func() { opened <- struct{}{} }
	return g, opened
}

// warmClient is a client of srv whose dials go through a guard that
// signals each connection it opens ahead.
func warmClient(t *testing.T, srv *httptest.Server) (*Client, *Guard, chan struct{}) {
	t.Helper()
	g, opened := warmGuard(srv.Listener.Addr().String())
	base := DefaultTransport()
	base.DialContext = g.DialContext
	t.Cleanup(base.CloseIdleConnections)
	c, err := New("example.test", srv.URL, WithTransport(base), WithGuard(g))
	if err != nil {
		t.Fatal(err)
	}
	return c, g, opened
}

// writeManifest answers an empty OCI image manifest.
func writeManifest(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	io.WriteString(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
}

// openingTo returns how many connections to addr Warm is opening.
func openingTo(g *Guard, addr string) int {
	g.warm.mu.Lock()
	defer g.warm.mu.Unlock()
	return g.warm.opening[addr]
}

// idleOrParked returns how many connections to addr are idle in the
// transport or parked.
func idleOrParked(g *Guard, addr string) int {
	g.warm.mu.Lock()
	defer g.warm.mu.Unlock()
	return g.warm.idle[addr] + len(g.warm.parked[addr])
}

func parkedTo(g *Guard, addr string) int {
	g.warm.mu.Lock()
	defer g.warm.mu.Unlock()
	return len(g.warm.parked[addr])
}

// Connections opened ahead (Warm) are the ones requests use: n opened, n
// requests at once, no connection more; a second Warm while they are
// parked opens none.
func TestWarmConnectionsAreUsed(t *testing.T) {
	const n = 4
	arrived, release := make(chan struct{}, n), make(chan struct{})
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release // every request holds its connection until all are in
		io.WriteString(w, "ok")
	}), nil)
	addr := srv.Listener.Addr().String()
	g, opened := warmGuard(addr)
	g.Warm(addr, n)
	for range n {
		<-opened
	}
	g.Warm(addr, n)
	if got := parkedTo(g, addr); got != n {
		t.Fatalf("%d connections parked after Warm(%d) twice, want %d", got, n, n)
	}
	tr := &http.Transport{DialContext: g.DialContext}
	defer tr.CloseIdleConnections()
	done := make(chan error, n)
	for range n {
		go func() {
			resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			done <- err
		}()
	}
	for range n {
		<-arrived // n requests at once, on n connections
	}
	close(release)
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := conns.Load(); got != n {
		t.Errorf("%d connections accepted for %d requests after Warm(%d), want %d", got, n, n, n)
	}
	if got := parkedTo(g, addr); got != 0 {
		t.Errorf("%d connections still parked, want 0", got)
	}
}

// A parked connection the server has closed is never handed out: the
// request dials a new one, and succeeds.
func TestWarmConnectionClosedByServerNotUsed(t *testing.T) {
	hungUp := make(chan struct{})
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), func(c net.Conn) {
		c.Close() // the server hangs up on the parked connection
		close(hungUp)
	})
	addr := srv.Listener.Addr().String()
	g, opened := warmGuard(addr)
	g.Warm(addr, 1)
	<-opened
	<-hungUp
	g.warm.mu.Lock()
	parked := g.warm.parked[addr][0].Conn
	g.warm.mu.Unlock()
	waitReadable(t, parked) // the end has arrived on our side

	tr := &http.Transport{DialContext: g.DialContext}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
	if err != nil {
		t.Fatalf("request after the server closed the parked connection: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" || conns.Load() != 2 {
		t.Errorf("body %q, %d connections accepted; want ok on a second connection", body, conns.Load())
	}
	if got := parkedTo(g, addr); got != 0 {
		t.Errorf("%d connections still parked, want 0", got)
	}
}

// A guard for a transport that may go through an HTTP proxy opens nothing
// ahead: the transport would dial the proxy, not the upstream.
func TestWarmNothingWhenProxied(t *testing.T) {
	srv, conns := countingServer(t, http.NotFoundHandler(), nil)
	addr := srv.Listener.Addr().String()
	g, _ := warmGuard(addr)
	g.Proxy(http.ProxyFromEnvironment)
	g.Warm(addr, 4)
	g.warm.mu.Lock()
	opening := g.warm.opening[addr]
	g.warm.mu.Unlock()
	if opening != 0 || parkedTo(g, addr) != 0 || conns.Load() != 0 {
		t.Errorf("a proxied guard opened connections ahead (%d opening)", opening)
	}
}

// Warm goes through the guard: an address it refuses gets no connection.
func TestWarmRespectsTheGuard(t *testing.T) {
	srv, conns := countingServer(t, http.NotFoundHandler(), nil)
	addr := srv.Listener.Addr().String()
	g, opened := warmGuard("") // allows nothing on the loopback
	g.Warm(addr, 2)
	<-opened
	<-opened
	if conns.Load() != 0 || parkedTo(g, addr) != 0 {
		t.Errorf("a refused address got %d connections", conns.Load())
	}
}

// The client warms its own upstream's address: a ping and a manifest GET
// after Warm(1) go over the connection opened ahead.
func TestClientWarmsItsUpstream(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		writeManifest(w)
	}), nil)
	addr := srv.Listener.Addr().String()
	c, g, opened := warmClient(t, srv)
	c.Warm(1)
	<-opened
	if parkedTo(g, addr) != 1 {
		t.Fatalf("Warm(1) parked %d connections to %s", parkedTo(g, addr), addr)
	}
	if _, err := c.Manifest(context.Background(), "library/app", oci.Ref{Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	if got := conns.Load(); got != 1 || parkedTo(g, addr) != 0 {
		t.Errorf("%d connections for a ping and a manifest after Warm(1), want 1 (the one opened ahead)", got)
	}
}

// waitReadable waits until something (here: the end) can be read from c,
// reading nothing.
func waitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A manifest GET with BlobsFollow(n) has n connections ready for the
// blobs: the handshake's, idle again once the manifest is in, and n-1
// opened after the handshake (the ping saw one connection: its own); the
// manifest's answer is not held up for them.
func TestManifestBlobsFollowWarmsAfterTheHandshake(t *testing.T) {
	var atPing atomic.Int32
	var conns *atomic.Int32
	srv, c0 := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			atPing.Store(conns.Load())
			return
		}
		writeManifest(w)
	}), nil)
	conns = c0
	addr := srv.Listener.Addr().String()
	c, g, opened := warmClient(t, srv)
	if _, err := c.Manifest(context.Background(), "library/app", oci.Ref{Tag: "v1"}, BlobsFollow(3)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		<-opened
	}
	if got := atPing.Load(); got != 1 {
		t.Errorf("the ping arrived with %d connections open, want 1: warmed before the handshake", got)
	}
	if got := parkedTo(g, addr); got != 2 {
		t.Errorf("%d connections parked after a manifest with BlobsFollow(3), want 2 (and the handshake's, idle)", got)
	}
}

// A cold pull's manifest warms connections for its blobs only where the
// transport has none idle: once a pull has left n connections idle, the
// next one's BlobsFollow(n) opens none (the blobs' requests take the
// idle ones, and connections opened ahead would be closed unused,
// pull after pull).
func TestWarmCountsIdleConnections(t *testing.T) {
	const n = 3
	arrived, release := make(chan struct{}, n), make(chan struct{}, n)
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case strings.Contains(r.URL.Path, "/manifests/"):
			writeManifest(w)
		default:
			arrived <- struct{}{}
			<-release // every blob request holds its connection until all are in
			io.WriteString(w, "ok")
		}
	}), nil)
	addr := srv.Listener.Addr().String()
	c, g, opened := warmClient(t, srv)
	// The transport puts a connection back idle a moment after its body
	// is read: the second pull is to find all of them idle.
	idled := make(chan struct{}, 64)
	g.warm.idled = func() { idled <- struct{}{} }
	ctx := context.Background()
	blobs := func() {
		done := make(chan error, n)
		for i := range n {
			go func() {
				body, _, err := c.Blob(ctx, "library/app", digest.FromString(strconv.Itoa(i)), 0)
				if err == nil {
					_, err = io.ReadAll(body)
					body.Close()
				}
				done <- err
			}()
		}
		for range n {
			<-arrived // n requests at once, on n connections
		}
		for range n {
			release <- struct{}{}
		}
		for range n {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := c.Manifest(ctx, "library/app", oci.Ref{Tag: "v1"}, BlobsFollow(n)); err != nil {
		t.Fatal(err)
	}
	for openingTo(g, addr) > 0 { // all opened, or the second pull's count is off
		<-opened
	}
	blobs()
	for idleOrParked(g, addr) < n {
		<-idled
	}
	// One the first pull opened ahead may be left parked (its blobs took
	// the manifest's idle connection): not the second's.
	parked := parkedTo(g, addr)
	if _, err := c.Manifest(ctx, "library/app", oci.Ref{Tag: "v1"}, BlobsFollow(n)); err != nil {
		t.Fatal(err)
	}
	if warmed := openingTo(g, addr) + parkedTo(g, addr) - parked; warmed > 0 {
		t.Errorf("the second pull's manifest, with %d connections open, warmed %d more for its %d blobs", conns.Load(), warmed, n)
	}
}
