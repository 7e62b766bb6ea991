package server

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// publicAddr is a public address (TEST-NET-3, never routed) that the test
// proxy answers for itself, so nothing leaves the machine.
const publicAddr = "203.0.113.7"

// forwardProxy is an HTTP proxy that records what it is asked to carry and
// serves publicAddr from the upstream behind it.
type forwardProxy struct {
	srv   *httptest.Server
	mu    sync.Mutex
	asked []string
}

func startForwardProxy(t *testing.T, behind string) *forwardProxy {
	t.Helper()
	target, err := url.Parse(behind)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{} // straight to the upstream, no proxy
	p := &forwardProxy{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.asked = append(p.asked, r.Method+" "+r.RequestURI)
		p.mu.Unlock()
		if r.Method == http.MethodConnect || r.URL.Host != publicAddr {
			http.Error(w, "the test proxy carries only "+publicAddr, http.StatusBadGateway)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *forwardProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.asked)
}

// With an HTTP proxy in the environment, connections go to the proxy and
// the dial guard never sees where a request is really going; so a request
// the proxy would carry to an address the configuration does not name,
// and that is not public, is refused before the proxy is asked. A public
// one goes through the proxy. Another configured upstream on the loopback
// (never proxied) is refused by the dial guard and sees no connection.
func TestWiringGuardsProxiedRequests(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	layer := img.Layers[0]
	var bConns atomic.Int32
	b := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	b.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			bConns.Add(1)
		}
	}
	b.Start()
	t.Cleanup(b.Close)
	px := startForwardProxy(t, up.URL())

	cfg := config.Default()
	cfg.Data = filepath.Join(t.TempDir(), "data")
	cfg.Upstream = up.URL()
	cfg.Upstreams = map[string]config.Upstream{"b.example": {URL: b.URL}}
	env := map[string]string{"HTTP_PROXY": px.srv.URL, "https_proxy": px.srv.URL}
	mirror := wiredProxy(t, cfg, WithEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	pull := func() (int, []byte) {
		t.Helper()
		resp, err := http.Get(mirror + "/v2/library/app/blobs/" + layer)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}

	for _, to := range []string{"http://10.255.0.1:5000", "http://169.254.169.254", "https://192.168.1.1", "http://[fd00::1]:5000", "http://100.64.0.1", b.URL} {
		up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: layer,
			Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {to + "/v2/library/app/blobs/" + layer}}})
		if status, body := pull(); status < 400 {
			t.Errorf("redirect to %s: answered %d %.100q, want an error", to, status, body)
		}
	}
	if asked := px.requests(); len(asked) != 0 {
		t.Errorf("the proxy was asked %q", asked)
	}
	if n := bConns.Load(); n != 0 {
		t.Errorf("upstream b.example got %d connections from docker.io's redirect", n)
	}

	// A public address is carried by the proxy.
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: layer, Times: 1,
		Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {"http://" + publicAddr + "/v2/library/app/blobs/" + layer}}})
	status, body := pull()
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(body)); status != http.StatusOK || got != layer {
		t.Fatalf("redirect to %s: %d, body %s; want 200 with %s", publicAddr, status, got, layer)
	}
	if asked, want := px.requests(), []string{"GET http://" + publicAddr + "/v2/library/app/blobs/" + layer}; !slices.Equal(asked, want) {
		t.Errorf("the proxy was asked %q, want %q", asked, want)
	}
}
