package tests

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// port is the port of a "HOST:PORT".
func port(t testing.TB, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wantNoConnection checks that the other upstream b was never connected to.
func wantNoConnection(t testing.TB, b *farHost) {
	t.Helper()
	if n := b.conns.Load(); n != 0 {
		t.Errorf("upstream b.example (%s) got %d connections meant by another upstream", b.host(), n)
	}
}

// Each upstream's connections may reach its own address (and its own
// token realm), not every configured upstream's: upstream A cannot send
// the mirror to upstream B's private address, by a redirect, a token
// realm or its token endpoint's redirect, and B (on the loopback, so
// reached only because the configuration names it) sees no connection.
// B is named as 127.0.0.1 and as localhost, and once on the same host name
// as A, on another port.
func TestUpstreamsCannotReachEachOther(t *testing.T) {
	creds := authn.FromConfig(authn.AuthConfig{Username: "puller", Password: "a-secret-for-a-only"})
	for _, c := range []struct {
		name string
		// aHost and bHost are the host names A and B are configured with.
		aHost, bHost string
	}{
		{"B as 127.0.0.1", "127.0.0.1", "127.0.0.1"},
		{"B as localhost", "127.0.0.1", "localhost"},
		{"A and B on localhost", "localhost", "localhost"},
	} {
		start := func(t *testing.T, a *fixture.Upstream, b *farHost) (*servertest.Server, string) {
			bURL := "http://" + c.bHost + ":" + b.port()
			m := servertest.StartUpstreams(t, []servertest.Upstream{
				{Host: "docker.io", URL: "http://" + c.aHost + ":" + port(t, a.Host()), Auth: creds},
				{Host: "b.example", URL: bURL},
			}, nil)
			return m, bURL
		}
		t.Run(c.name+"/redirect", func(t *testing.T) {
			a := fixture.StartUpstream(t)
			img := a.SeedImage(t, "library/app", "v1", 2, 4<<10)
			b := startFarHost(t)
			m, bURL := start(t, a, b)
			a.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: img.Layers[0],
				Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {bURL + "/v2/library/app/blobs/" + img.Layers[0]}}})
			wantRefused(t, get(t, m.URL()+"/v2/app/blobs/"+img.Layers[0]))
			a.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest,
				Status: http.StatusFound, Header: http.Header{"Location": {bURL + "/v2/library/app/manifests/v1"}}})
			wantRefused(t, get(t, m.URL()+"/v2/app/manifests/v1"))
			wantNoConnection(t, b)
			// A itself is still reached, and nothing was kept from the refusals.
			a.ClearFault()
			wantManifest(t, get(t, m.URL()+"/v2/app/manifests/v1"), img.Manifest, img.MediaType)
			wantBlob(t, m, "app", img.Layers[0])
			wantNoConnection(t, b)
		})
		t.Run(c.name+"/token realm", func(t *testing.T) {
			a := fixture.StartUpstream(t)
			a.SeedImage(t, "library/app", "v1", 1, 4<<10)
			b := startFarHost(t)
			m, bURL := start(t, a, b)
			a.SetFault(fixture.Fault{Kind: fixture.KindPing, Status: http.StatusUnauthorized, Header: http.Header{
				"Www-Authenticate": {fmt.Sprintf(`Bearer realm=%q,service="fixture"`, bURL+"/token")}}})
			for range 2 {
				wantRefused(t, get(t, m.URL()+"/v2/app/manifests/v1"))
			}
			wantNoConnection(t, b)
		})
		if c.aHost != "127.0.0.1" {
			// The fixture's realm is on 127.0.0.1, which go-containerregistry
			// refuses for a registry named otherwise: no token request.
			continue
		}
		t.Run(c.name+"/token redirect", func(t *testing.T) {
			a := fixture.StartUpstream(t, fixture.WithTokenAuth())
			a.SeedImage(t, "library/app", "v1", 1, 4<<10)
			b := startFarHost(t)
			m, bURL := start(t, a, b)
			a.SetFault(fixture.Fault{Kind: fixture.KindToken, Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {bURL + "/token"}}})
			for range 2 {
				wantRefused(t, get(t, m.URL()+"/v2/app/manifests/v1"))
			}
			wantNoConnection(t, b)
		})
	}
}

// An upstream's token realm on its own host works: on its own address, and
// on another port of its own host name (a token server beside the
// registry), which the mirror learns from the upstream's own /v2/
// challenge, while another upstream, named by address, is still not
// reached.
func TestUpstreamOwnTokenRealm(t *testing.T) {
	creds := authn.FromConfig(authn.AuthConfig{Username: "puller", Password: "realm-secret"})
	b := startFarHost(t)
	t.Run("same address", func(t *testing.T) {
		a := fixture.StartUpstream(t, fixture.WithTokenAuth())
		img := a.SeedImage(t, "library/app", "v1", 2, 4<<10)
		m := servertest.StartUpstreams(t, []servertest.Upstream{
			{Host: "docker.io", URL: a.URL(), Auth: creds},
			{Host: "b.example", URL: b.srv.URL},
		}, nil)
		wantImage(t, m, "app", img)
		if n := a.Count("", fixture.KindToken); n == 0 {
			t.Error("no token was asked for")
		}
		wantNoConnection(t, b)
	})
	t.Run("another port of the same host name", func(t *testing.T) {
		a := fixture.StartUpstream(t, fixture.WithTokenAuth())
		img := a.SeedImage(t, "library/app", "v1", 2, 4<<10)
		// The token server on its own port hands out A's tokens.
		aURL, _ := url.Parse(a.URL())
		var tokens atomic.Int32
		tokenServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tokens.Add(1)
			httputil.NewSingleHostReverseProxy(aURL).ServeHTTP(w, r)
		}))
		t.Cleanup(tokenServer.Close)
		realm := "http://localhost:" + port(t, tokenServer.Listener.Addr().String()) + "/token"
		a.SetFault(fixture.Fault{Kind: fixture.KindPing, Status: http.StatusUnauthorized, Header: http.Header{
			"Www-Authenticate": {fmt.Sprintf(`Bearer realm=%q,service=%q`, realm, fixture.TokenService)}}})
		m := servertest.StartUpstreams(t, []servertest.Upstream{
			{Host: "docker.io", URL: "http://localhost:" + port(t, a.Host()), Auth: creds},
			{Host: "b.example", URL: "http://localhost:" + b.port()},
		}, nil)
		wantImage(t, m, "app", img)
		m.WaitIdle()
		if tokens.Load() == 0 {
			t.Error("the token server beside the registry was not asked")
		}
		wantNoConnection(t, b)
	})
}
