package tests

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// wantImageAt pulls an image by digest, its manifest and every blob,
// through the mirror under name with query (e.g. "?ns=ghcr.io").
func wantImageAt(t testing.TB, m *servertest.Server, name, query string, img *fixture.Image) {
	t.Helper()
	base := m.URL() + "/v2/" + name
	wantManifest(t, get(t, base+"/manifests/"+img.Digest+query), img.Manifest, img.MediaType)
	for _, b := range img.Blobs() {
		r := get(t, base+"/blobs/"+b+query)
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("%s%s: blob %s: status %d err %v body %.200s", name, query, b, r.status, r.err, r.body)
		}
		if got := sha(r.body); got != b {
			t.Fatalf("%s%s: blob %s: body hashes to %s", name, query, b, got)
		}
	}
}

// upstreamPaths returns the distinct request paths an upstream received,
// the ping excluded.
func upstreamPaths(up *fixture.Upstream) map[string]bool {
	paths := map[string]bool{}
	for _, r := range up.Requests() {
		if r.Kind != fixture.KindPing {
			paths[r.Path] = true
		}
	}
	return paths
}

// Three upstreams hold different content under the same repository name:
// ns, a host prefix in the path and the docker.io default each reach the
// right one (one-component docker.io names get library/, other hosts'
// names are kept as they are), and each gets requests for its own names
// only.
func TestUpstreamRouting(t *testing.T) {
	hub := fixture.StartUpstream(t)
	ghcr := fixture.StartUpstream(t)
	local := fixture.StartUpstream(t)
	hubImg := hub.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ghcrImg := ghcr.SeedImage(t, "library/app", "v1", 2, 4<<10)
	localImg := local.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ghcrSolo := ghcr.SeedImage(t, "app", "v1", 1, 4<<10) // a one-component name on a non-Hub registry
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "ghcr.io", URL: ghcr.URL()},
		{Host: "registry.example:5000", URL: local.URL()},
	}, nil)

	cases := []struct {
		name, query string
		up          *fixture.Upstream
		img         *fixture.Image
		path        string // the repository asked upstream
	}{
		{"app", "", hub, hubImg, "library/app"},
		{"library/app", "", hub, hubImg, "library/app"},
		{"app", "?ns=docker.io", hub, hubImg, "library/app"},
		{"library/app", "?ns=docker.io", hub, hubImg, "library/app"},
		{"docker.io/app", "", hub, hubImg, "library/app"},
		{"docker.io/library/app", "", hub, hubImg, "library/app"},
		{"index.docker.io/library/app", "", hub, hubImg, "library/app"},
		{"ghcr.io/library/app", "", ghcr, ghcrImg, "library/app"},
		{"library/app", "?ns=ghcr.io", ghcr, ghcrImg, "library/app"},
		{"ghcr.io/app", "", ghcr, ghcrSolo, "app"},
		{"app", "?ns=ghcr.io", ghcr, ghcrSolo, "app"},
		{"registry.example:5000/library/app", "", local, localImg, "library/app"},
		{"library/app", "?ns=registry.example:5000", local, localImg, "library/app"},
	}
	for _, c := range cases {
		t.Run(c.name+c.query, func(t *testing.T) {
			r := get(t, m.URL()+"/v2/"+c.name+"/manifests/v1"+c.query)
			wantManifest(t, r, c.img.Manifest, c.img.MediaType)
			wantImageAt(t, m, c.name, c.query, c.img)
			if got := get(t, m.URL()+"/v2/"+c.name+"/tags/list"+c.query); got.status != http.StatusOK || !bytes.Contains(got.body, []byte(`"v1"`)) {
				t.Errorf("tags/list: status %d body %s", got.status, got.body)
			}
			if !upstreamPaths(c.up)["/v2/"+c.path+"/manifests/v1"] {
				t.Errorf("the upstream was not asked for %s:v1; it saw %v", c.path, upstreamPaths(c.up))
			}
		})
	}
	m.WaitIdle()
	// Each upstream saw its own repositories only.
	for up, repos := range map[*fixture.Upstream][]string{hub: {"library/app"}, ghcr: {"library/app", "app"}, local: {"library/app"}} {
		for p := range upstreamPaths(up) {
			ok := false
			for _, repo := range repos {
				ok = ok || strings.HasPrefix(p, "/v2/"+repo+"/")
			}
			if !ok {
				t.Errorf("upstream %s was asked for %s", up.Host(), p)
			}
		}
	}
}

// A registry's host is named in any case (host names are case-insensitive;
// containerd sends ns as the image reference spells it, and a reference's
// host may have capitals: GHCR.io/owner/app): each spelling reaches the
// configured upstream, Docker Hub's aliases too.
func TestUpstreamHostInAnyCase(t *testing.T) {
	m, _, hubImg, ghcrImg := startHubAndGHCR(t, "ghcr.io")
	wantImagesNamed(t, m, []namedImage{
		{"owner/app", "?ns=GHCR.io", ghcrImg},
		{"GHCR.IO/owner/app", "", ghcrImg},
		{"GHCR.io/owner/app", "?ns=ghcr.IO", ghcrImg},
		{"library/app", "?ns=Docker.IO", hubImg},
		{"app", "?ns=Index.Docker.IO", hubImg},
		{"Docker.io/library/app", "", hubImg},
	})
}

// startHubAndGHCR starts a mirror of two upstreams: docker.io, holding
// library/app:v1 (hubImg), and one configured as ghcrHost, holding
// owner/app:v1 (ghcrImg).
func startHubAndGHCR(t *testing.T, ghcrHost string) (m *servertest.Server, ghcr *fixture.Upstream, hubImg, ghcrImg *fixture.Image) {
	hub := fixture.StartUpstream(t)
	ghcr = fixture.StartUpstream(t)
	hubImg = hub.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ghcrImg = ghcr.SeedImage(t, "owner/app", "v1", 1, 4<<10)
	m = servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: ghcrHost, URL: ghcr.URL()},
	}, nil)
	return m, ghcr, hubImg, ghcrImg
}

// namedImage is an image as a client names it: a repository and a query
// (?ns=).
type namedImage struct {
	name, query string
	img         *fixture.Image
}

// wantImagesNamed pulls each image through m as it is named, its tag v1
// and then the whole image, each a subtest.
func wantImagesNamed(t *testing.T, m *servertest.Server, images []namedImage) {
	for _, c := range images {
		t.Run(c.name+c.query, func(t *testing.T) {
			wantManifest(t, get(t, m.URL()+"/v2/"+c.name+"/manifests/v1"+c.query), c.img.Manifest, c.img.MediaType)
			wantImageAt(t, m, c.name, c.query, c.img)
		})
	}
}

// A registry's host with HTTPS's port, 443, names the same registry as
// without it (containerd sends ns as the image reference spells it:
// ns=ghcr.io:443 for ghcr.io:443/owner/app), whether the upstream is
// configured with the port or without: each spelling reaches it, Docker
// Hub's names too, and so does a prefetch; another port is another
// registry.
func TestUpstreamHostWithDefaultPort(t *testing.T) {
	for _, configured := range []string{"ghcr.io", "ghcr.io:443"} {
		t.Run(configured, func(t *testing.T) {
			m, ghcr, hubImg, ghcrImg := startHubAndGHCR(t, configured)
			wantImagesNamed(t, m, []namedImage{
				{"owner/app", "?ns=ghcr.io:443", ghcrImg},
				{"owner/app", "?ns=ghcr.io", ghcrImg},
				{"ghcr.io:443/owner/app", "", ghcrImg},
				{"ghcr.io/owner/app", "", ghcrImg},
				{"GHCR.io:443/owner/app", "?ns=ghcr.io", ghcrImg},
				{"ghcr.io/owner/app", "?ns=ghcr.io:443", ghcrImg},
				{"library/app", "?ns=docker.io:443", hubImg},
				{"app", "?ns=index.docker.io:443", hubImg},
				{"registry-1.docker.io:443/library/app", "", hubImg},
			})
			for _, path := range []string{"ghcr.io:5000/owner/app/manifests/v1", "owner/app/manifests/v1?ns=ghcr.io:5000"} {
				wantError(t, get(t, m.URL()+"/v2/"+path), http.StatusNotFound, "NAME_UNKNOWN")
			}
			ghcr.ResetCounts()
			if j := prefetchDone(t, m, "ghcr.io:443/owner/app:v1", "ghcr.io/owner/app:v1"); j.State != storage.JobDone {
				t.Fatalf("prefetch: %+v", j)
			}
			if n := ghcr.Count(http.MethodGet, fixture.KindManifest) + ghcr.Count(http.MethodHead, fixture.KindManifest); n == 0 {
				t.Error("the prefetch did not ask the upstream")
			}
		})
	}
}

// A request scoped by ns answers with its value in OCI-Namespace, as the
// distribution spec says a proxy using ns should, on every route and on
// an error too; a request without ns has none.
func TestNamespaceEchoed(t *testing.T) {
	hub := fixture.StartUpstream(t)
	ghcr := fixture.StartUpstream(t)
	img := ghcr.SeedImage(t, "owner/app", "v1", 1, 4<<10)
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "ghcr.io", URL: ghcr.URL()},
	}, nil)
	base := m.URL() + "/v2/owner/app"
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/manifests/v1"},
		{http.MethodHead, "/manifests/v1"},
		{http.MethodGet, "/manifests/" + img.Digest},
		{http.MethodGet, "/blobs/" + img.Layers[0]},
		{http.MethodHead, "/blobs/" + img.Config},
		{http.MethodGet, "/tags/list"},
		{http.MethodGet, "/referrers/" + img.Digest},
		{http.MethodGet, "/manifests/nosuchtag"},
	} {
		r := do(t, c.method, base+c.path+"?ns=ghcr.io", map[string]string{"Accept": manifestAccept})
		if r.err != nil || r.status == 0 {
			t.Fatalf("%s %s?ns=ghcr.io: %v", c.method, c.path, r.err)
		}
		if got := r.header.Values("OCI-Namespace"); len(got) != 1 || got[0] != "ghcr.io" {
			t.Errorf("%s %s?ns=ghcr.io: %d, OCI-Namespace %q, want ghcr.io", c.method, c.path, r.status, got)
		}
	}
	if r := get(t, m.URL()+"/v2/ghcr.io/owner/app/manifests/v1"); r.status != http.StatusOK || r.header.Get("OCI-Namespace") != "" {
		t.Errorf("without ns: %d, OCI-Namespace %q, want none", r.status, r.header.Get("OCI-Namespace"))
	}
}

// Content cached from one upstream is never served for another's names,
// even under the same repository name and by digest, and the other
// upstream is not asked for it either; it is served for its own names with
// its upstream stopped.
func TestUpstreamIsolation(t *testing.T) {
	hub := fixture.StartUpstream(t)
	ghcr := fixture.StartUpstream(t)
	hubImg := hub.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ghcrImg := ghcr.SeedImage(t, "library/app", "v1", 2, 4<<10)
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "ghcr.io", URL: ghcr.URL()},
	}, nil)

	ghcr.Tag(t, "library/app", ghcrImg.Digest, "ghcr-only")

	// B's image is cached, by tag and digest, with every blob.
	wantManifest(t, get(t, m.URL()+"/v2/ghcr.io/library/app/manifests/v1"), ghcrImg.Manifest, ghcrImg.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/ghcr.io/library/app/manifests/ghcr-only"), ghcrImg.Manifest, ghcrImg.MediaType)
	wantImageAt(t, m, "ghcr.io/library/app", "", ghcrImg)
	m.WaitIdle()
	ghcrSeen := ghcr.Count("", "")

	// docker.io names, even the same repository: unknown, as docker.io says.
	for _, name := range []string{"app", "library/app", "docker.io/library/app", "app?ns=docker.io"} {
		base, query, _ := strings.Cut(name, "?")
		if query != "" {
			query = "?" + query
		}
		r := get(t, m.URL()+"/v2/"+base+"/manifests/"+ghcrImg.Digest+query)
		wantError(t, r, http.StatusNotFound, "MANIFEST_UNKNOWN")
		for _, b := range ghcrImg.Blobs() {
			wantError(t, get(t, m.URL()+"/v2/"+base+"/blobs/"+b+query), http.StatusNotFound, "BLOB_UNKNOWN")
			h := do(t, http.MethodHead, m.URL()+"/v2/"+base+"/blobs/"+b+query, nil)
			if h.status != http.StatusNotFound {
				t.Errorf("HEAD %s blob %s: status %d, want 404", name, b, h.status)
			}
		}
	}
	if n := ghcr.Count("", "") - ghcrSeen; n != 0 {
		t.Errorf("ghcr.io was asked %d times for docker.io names: %v", n, ghcr.Requests()[ghcrSeen:])
	}
	// Another ghcr.io repository does not get it on the strength of its
	// digest either: only if ghcr.io says that repository has it.
	r := get(t, m.URL()+"/v2/ghcr.io/other/app/blobs/"+ghcrImg.Layers[0])
	if r.status != http.StatusNotFound {
		t.Errorf("ghcr.io/other/app blob: status %d, want 404 (body %s)", r.status, r.body)
	}
	wantImageAt(t, m, "library/app", "", hubImg) // docker.io's own content still comes

	// B stopped: its cached content is served for its names, fresh or
	// stale, and still not for docker.io's.
	ghcr.Stop()
	for _, name := range []string{"ghcr.io/library/app", "library/app?ns=ghcr.io"} {
		base, query, _ := strings.Cut(name, "?")
		if query != "" {
			query = "?" + query
		}
		wantManifest(t, get(t, m.URL()+"/v2/"+base+"/manifests/v1"+query), ghcrImg.Manifest, ghcrImg.MediaType)
		wantImageAt(t, m, base, query, ghcrImg)
	}
	m.Clock.Advance(24 * 60 * 60 * 1e9)
	r = get(t, m.URL()+"/v2/ghcr.io/library/app/manifests/v1")
	wantManifest(t, r, ghcrImg.Manifest, ghcrImg.MediaType)
	if c := r.header.Get("X-Cache"); c != "stale" {
		t.Errorf("X-Cache %q, want stale", c)
	}
	wantError(t, get(t, m.URL()+"/v2/library/app/manifests/"+ghcrImg.Digest), http.StatusNotFound, "MANIFEST_UNKNOWN")
	wantError(t, get(t, m.URL()+"/v2/library/app/blobs/"+ghcrImg.Layers[1]), http.StatusNotFound, "BLOB_UNKNOWN")

	// Restarted on the same data with docker.io down too: each upstream's
	// content for its own names only. docker.io's library/app:v1 was never
	// pulled by tag, so it cannot be answered, least of all with ghcr.io's.
	hub.Stop()
	m.Restart()
	wantManifest(t, get(t, m.URL()+"/v2/ghcr.io/library/app/manifests/v1"), ghcrImg.Manifest, ghcrImg.MediaType)
	wantImageAt(t, m, "ghcr.io/library/app", "", ghcrImg)
	wantImageAt(t, m, "library/app", "", hubImg)
	wantRefused(t, get(t, m.URL()+"/v2/library/app/manifests/v1"))
	wantRefused(t, get(t, m.URL()+"/v2/library/app/manifests/"+ghcrImg.Digest))
	for _, b := range ghcrImg.Blobs() {
		wantRefused(t, get(t, m.URL()+"/v2/library/app/blobs/"+b))
	}
	wantRefused(t, get(t, m.URL()+"/v2/library/app/manifests/ghcr-only"))
	if r := get(t, m.URL()+"/v2/ghcr.io/library/app/tags/list"); r.status != http.StatusOK || !bytes.Contains(r.body, []byte(`"ghcr-only"`)) {
		t.Errorf("ghcr.io's cached tags: status %d body %s", r.status, r.body)
	}
	if r := get(t, m.URL()+"/v2/library/app/tags/list"); bytes.Contains(r.body, []byte("ghcr-only")) {
		t.Errorf("docker.io's tags list has ghcr.io's tag: status %d body %s", r.status, r.body)
	}
	wantRefused(t, get(t, m.URL()+"/v2/ghcr.io/library/app/manifests/"+hubImg.Digest))
	for _, b := range hubImg.Blobs() {
		wantRefused(t, get(t, m.URL()+"/v2/ghcr.io/library/app/blobs/"+b))
	}
}

// farHost is a server on 127.0.0.1 that the mirror must never reach: it
// counts the connections it accepts.
type farHost struct {
	srv   *httptest.Server
	conns atomic.Int64
}

func startFarHost(t *testing.T) *farHost { return startFarHostOn(t, "127.0.0.1") }

// startFarHostOn starts a farHost listening on ip.
func startFarHostOn(t *testing.T, ip string) *farHost {
	t.Helper()
	f := &farHost{}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "the mirror must not reach this host", http.StatusTeapot)
	}))
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	f.srv.Listener.Close()
	f.srv.Listener = l
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

// host is "127.0.0.1:PORT".
func (f *farHost) host() string { return f.srv.Listener.Addr().String() }

// port is "PORT".
func (f *farHost) port() string { _, p, _ := net.SplitHostPort(f.host()); return p }

func (f *farHost) wantUntouched(t testing.TB) {
	t.Helper()
	if n := f.conns.Load(); n != 0 {
		t.Errorf("the unconfigured host %s got %d connections", f.host(), n)
	}
}

// wantRefused checks a request the mirror could not complete: an OCI
// error, not content.
func wantRefused(t testing.TB, r response) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("request failed: %v", r.err)
	}
	if r.status < 400 {
		t.Fatalf("status %d, want an error (body %.200s)", r.status, r.body)
	}
	errorCode(t, r.body)
}

// Hosts that are not configured upstreams are refused, whether named by
// ns, by the path, by an upstream's redirect or by its token realm, and
// nothing is fetched from them.
func TestUnconfiguredHostsAreNeverReached(t *testing.T) {
	far := startFarHost(t)

	t.Run("ns and path", func(t *testing.T) {
		hub := fixture.StartUpstream(t)
		img := hub.SeedImage(t, "library/app", "v1", 1, 4<<10)
		m := servertest.Start(t, hub.URL())
		for _, host := range []string{far.host(), "localhost:" + far.port(), "ghcr.io"} {
			for _, route := range []string{"manifests/v1", "manifests/" + img.Digest, "blobs/" + img.Layers[0], "tags/list"} {
				wantError(t, get(t, m.URL()+"/v2/library/app/"+route+"?ns="+host), http.StatusNotFound, "NAME_UNKNOWN")
				wantError(t, get(t, m.URL()+"/v2/"+host+"/library/app/"+route), http.StatusNotFound, "NAME_UNKNOWN")
				h := do(t, http.MethodHead, m.URL()+"/v2/"+host+"/library/app/"+route, nil)
				if h.status != http.StatusNotFound {
					t.Errorf("HEAD %s/%s: status %d, want 404", host, route, h.status)
				}
			}
		}
		if n := hub.Count("", ""); n != 0 {
			t.Errorf("docker.io got %d requests for other hosts' names", n)
		}
		far.wantUntouched(t)
	})

	t.Run("redirect", func(t *testing.T) {
		hub := fixture.StartUpstream(t)
		img := hub.SeedImage(t, "library/app", "v1", 2, 4<<10)
		m := servertest.Start(t, hub.URL())

		// A redirect to the upstream itself is followed (registries send
		// blobs from elsewhere), so the refusals below are the guard's.
		hub.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: img.Layers[0], Times: 1,
			Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {hub.URL() + "/v2/library/app/blobs/" + img.Layers[0]}}})
		wantBlob(t, m, "app", img.Layers[0])

		uncached := []string{img.Config, img.Layers[1]}
		for i, target := range []string{far.srv.URL, "http://localhost:" + far.port()} {
			blob := uncached[i]
			hub.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: blob,
				Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {target + "/v2/library/app/blobs/" + blob}}})
			wantRefused(t, get(t, m.URL()+"/v2/app/blobs/"+blob))
			hub.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest,
				Status: http.StatusFound, Header: http.Header{"Location": {target + "/v2/library/app/manifests/v1"}}})
			wantRefused(t, get(t, m.URL()+"/v2/app/manifests/v1"))
			hub.ClearFault()
			far.wantUntouched(t)
			wantBlob(t, m, "app", blob) // nothing was kept from the refused attempt
		}
		wantManifest(t, get(t, m.URL()+"/v2/app/manifests/v1"), img.Manifest, img.MediaType)
		far.wantUntouched(t)
	})

	// A token realm on another host: the upstream's challenge names it, or
	// its token endpoint redirects there. Credentials are configured, so
	// following would hand them over. (A realm on another port of the
	// upstream's own address is its token server beside it, which it
	// reaches: the address here is another one, 127.0.0.2. A name that
	// resolves to a private address, such as localhost, is the dial
	// guard's to refuse.)
	other := startFarHostOn(t, "127.0.0.2")
	creds := authn.FromConfig(authn.AuthConfig{Username: "puller", Password: "realm-secret"})
	for via, f := range map[string]struct {
		far   *farHost
		realm string
	}{"127.0.0.2": {other, other.srv.URL + "/token"}, "localhost": {far, "http://localhost:" + far.port() + "/token"}} {
		far, realm := f.far, f.realm
		t.Run("realm on "+via, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			up.SeedImage(t, "library/app", "v1", 1, 4<<10)
			up.SetFault(fixture.Fault{Kind: fixture.KindPing, Status: http.StatusUnauthorized, Header: http.Header{
				"Www-Authenticate": {fmt.Sprintf(`Bearer realm=%q,service="fixture"`, realm)}}})
			m := servertest.StartUpstreams(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL(), Auth: creds}}, nil)
			for range 2 {
				wantRefused(t, get(t, m.URL()+"/v2/app/manifests/v1"))
			}
			far.wantUntouched(t)
		})
		t.Run("token redirect to "+via, func(t *testing.T) {
			up := fixture.StartUpstream(t, fixture.WithTokenAuth())
			up.SeedImage(t, "library/app", "v1", 1, 4<<10)
			up.SetFault(fixture.Fault{Kind: fixture.KindToken, Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {realm}}})
			m := servertest.StartUpstreams(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL(), Auth: creds}}, nil)
			for range 2 {
				wantRefused(t, get(t, m.URL()+"/v2/app/manifests/v1"))
			}
			far.wantUntouched(t)
		})
	}
}

// startAuthUpstream starts a registry of the given kind with users.
func startAuthUpstream(t *testing.T, kind fixture.AuthKind, users map[string]string, opts ...fixture.AuthOption) *fixture.AuthUpstream {
	t.Helper()
	if kind == fixture.TokenAuth {
		return fixture.StartTokenAuthUpstream(t, users, opts...)
	}
	return fixture.StartBasicAuthUpstream(t, users, opts...)
}

// authMirror runs a mirror of up as private.example with the given
// credentials (nil: anonymous) and a JSON debug log into a buffer.
func authMirror(t *testing.T, up *fixture.AuthUpstream, auth authn.Authenticator) (*servertest.Server, *fixture.LogBuffer) {
	t.Helper()
	hub := fixture.StartUpstream(t)
	logs := &fixture.LogBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "private.example", URL: up.URL(), Auth: auth},
	}, nil, proxy.WithLogger(logger))
	return m, logs
}

// wantAuthError checks the client is told the upstream refused access:
// 401 UNAUTHORIZED or 403 DENIED, not a 404 or a 5xx.
func wantAuthError(t testing.TB, r response) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("request failed: %v", r.err)
	}
	switch code := errorCode(t, r.body); {
	case r.status == http.StatusUnauthorized && code == "UNAUTHORIZED":
	case r.status == http.StatusForbidden && code == "DENIED":
	default:
		t.Fatalf("status %d code %s, want 401 UNAUTHORIZED or 403 DENIED (body %s)", r.status, code, r.body)
	}
}

const (
	basicPassword = "b4sic-s3cret-pa55word"
	tokenPassword = "t0ken-s3cret-pa55word"
)

// Upstream credentials of both kinds: with the right ones pulls work (and
// a bearer token is fetched once per repository, not per request); with
// wrong ones, or none, the client gets 401 or 403 and the upstream sees a
// bounded number of requests. Neither the password nor a token appears in
// the logs, the answers or the metrics.
func TestUpstreamCredentials(t *testing.T) {
	for _, kind := range []fixture.AuthKind{fixture.BasicAuth, fixture.TokenAuth} {
		t.Run(kind.String(), func(t *testing.T) {
			password := basicPassword
			if kind == fixture.TokenAuth {
				password = tokenPassword
			}
			users := map[string]string{"puller": password, "locked": password}
			up := startAuthUpstream(t, kind, users, fixture.WithDeniedUsers("locked"))
			img := up.SeedImage(t, "team/app", "v1", 2, 8<<10)
			other := up.SeedImage(t, "team/other", "v1", 1, 4<<10)
			later := up.SeedImage(t, "team/app", "v2", 1, 4<<10)
			// The passwords, right or wrong, and the Basic headers made of
			// them (tokens are added as they are issued).
			secrets := []string{password, "not-" + password}
			for _, user := range []string{"puller", "locked", "nobody"} {
				for _, p := range []string{password, "not-" + password} {
					secrets = append(secrets, base64.StdEncoding.EncodeToString([]byte(user+":"+p)))
				}
			}
			var answers [][]byte // everything the mirror answered
			keep := func(r response) response {
				answers = append(answers, []byte(fmt.Sprint(r.header)), r.body)
				return r
			}

			t.Run("right", func(t *testing.T) {
				up.ResetCounts()
				m, logs := authMirror(t, up, authn.FromConfig(authn.AuthConfig{Username: "puller", Password: password}))
				if got := cranePull(t, ref(t, m, "private.example/team/app:v1")); got != img.Digest {
					t.Fatalf("pulled %s, want %s", got, img.Digest)
				}
				keep(get(t, m.URL()+"/v2/private.example/team/app/manifests/v1"))
				wantImageAt(t, m, "private.example/team/app", "", img)
				wantImageAt(t, m, "team/other", "?ns=private.example", other)
				m.WaitIdle()

				reqs := up.Requests()
				api := 0
				for _, r := range reqs {
					switch r.Kind {
					case fixture.KindManifest, fixture.KindBlob, fixture.KindTags:
						api++
						// The fill looks for signature tags most images lack.
						if r.Status/100 != 2 && !(r.Method == http.MethodHead && r.Status == http.StatusNotFound && strings.Contains(r.Path, "/manifests/sha256-")) {
							t.Errorf("%s %s: status %d", r.Method, r.Path, r.Status)
						}
						if want := map[fixture.AuthKind]string{fixture.BasicAuth: "basic", fixture.TokenAuth: "bearer"}[kind]; r.Auth != want {
							t.Errorf("%s %s: Authorization %q, want %q", r.Method, r.Path, r.Auth, want)
						}
					case fixture.KindToken:
						if r.User != "puller" || r.Status != http.StatusOK {
							t.Errorf("token request %+v: want puller's, 200", r)
						}
					}
				}
				if api < len(img.Blobs())+len(other.Blobs())+2 {
					t.Errorf("only %d registry requests upstream: %+v", api, reqs)
				}
				tokens := up.Count("", fixture.KindToken)
				if kind == fixture.TokenAuth && tokens != 2 {
					t.Errorf("%d token requests for %d registry requests on 2 repositories, want one per repository: %+v", tokens, api, reqs)
				}
				if kind == fixture.BasicAuth && tokens != 0 {
					t.Errorf("%d token requests to a Basic registry", tokens)
				}
				// Cached now: served without asking again, even with the
				// upstream's tokens all used.
				before := len(reqs)
				wantImageAt(t, m, "private.example/team/app", "", img)
				if n := len(up.Requests()) - before; n != 0 {
					t.Errorf("%d upstream requests for cached content", n)
				}

				if kind == fixture.TokenAuth {
					// The tokens expire: the next request gets a new one,
					// once, and the pull goes on.
					up.ExpireTokens()
					wantManifest(t, get(t, m.URL()+"/v2/private.example/team/app/manifests/v2"), later.Manifest, later.MediaType)
					wantImageAt(t, m, "private.example/team/app", "", later)
					m.WaitIdle()
					after := up.Requests()[before:]
					if n := up.Count("", fixture.KindToken) - tokens; n != 1 {
						t.Errorf("%d token requests after the tokens expired, want 1: %+v", n, after)
					}
					refused := 0
					for _, r := range after {
						if r.Kind != fixture.KindToken && r.Status == http.StatusUnauthorized {
							refused++
						}
					}
					if refused != 1 {
						t.Errorf("%d requests refused with the expired token, want 1: %+v", refused, after)
					}
				}
				wantNoSecrets(t, m, logs, append(secrets, up.IssuedTokens()...), answers)
				if kind == fixture.TokenAuth && len(up.IssuedTokens()) == 0 {
					t.Error("no token was issued")
				}
			})

			type credCase struct {
				name   string
				auth   authn.Authenticator
				status int // 0: 401 or 403
			}
			wrong := []credCase{
				{"wrong password", authn.FromConfig(authn.AuthConfig{Username: "puller", Password: "not-" + password}), 0},
				{"unknown user", authn.FromConfig(authn.AuthConfig{Username: "nobody", Password: password}), 0},
				{"anonymous", nil, 0},
			}
			if kind == fixture.TokenAuth {
				// The token server knows the account and refuses it.
				wrong = append(wrong, credCase{"denied user", authn.FromConfig(authn.AuthConfig{Username: "locked", Password: password}), http.StatusForbidden})
			}
			for _, c := range wrong {
				t.Run(c.name, func(t *testing.T) {
					up.ResetCounts()
					m, logs := authMirror(t, up, c.auth)
					urls := []string{
						"/v2/private.example/team/app/manifests/v1",
						"/v2/private.example/team/app/manifests/" + img.Digest,
						"/v2/private.example/team/app/blobs/" + img.Layers[0],
						"/v2/team/app/tags/list?ns=private.example",
						"/v2/private.example/team/app/manifests/v1",
					}
					for _, u := range urls {
						r := keep(get(t, m.URL()+u))
						wantAuthError(t, r)
						if c.status != 0 && r.status != c.status {
							t.Errorf("%s: status %d, want %d", u, r.status, c.status)
						}
					}
					h := do(t, http.MethodHead, m.URL()+"/v2/private.example/team/app/blobs/"+img.Layers[1], nil)
					if h.status != http.StatusUnauthorized && h.status != http.StatusForbidden {
						t.Errorf("HEAD blob: status %d, want 401 or 403", h.status)
					}
					m.WaitIdle()
					// A ping, a token and the request itself, and for a
					// bearer refusal one renewed token and retry: at most
					// four upstream requests per client request.
					clientRequests := len(urls) + 1
					if n := up.Count("", ""); n > 4*clientRequests {
						t.Errorf("%d upstream requests for %d client requests: %+v", n, clientRequests, up.Requests())
					}
					if n := up.Count("", fixture.KindToken); n > 2*clientRequests {
						t.Errorf("%d token requests for %d client requests", n, clientRequests)
					}
					for _, r := range up.Requests() {
						if r.Kind == fixture.KindToken && r.User != "" && c.auth != nil {
							t.Errorf("token request %+v authenticated with wrong credentials", r)
						}
					}
					wantNoSecrets(t, m, logs, append(secrets, up.IssuedTokens()...), answers)
					if !bytes.Contains(logs.Bytes(), []byte(`"status":401`)) && !bytes.Contains(logs.Bytes(), []byte(`"status":403`)) {
						t.Errorf("the refusals were not logged: %s", logs.Bytes())
					}
				})
			}

			// The upstream down with credentials configured: the errors
			// name the upstream, not the credentials.
			t.Run("upstream down", func(t *testing.T) {
				m, logs := authMirror(t, up, authn.FromConfig(authn.AuthConfig{Username: "puller", Password: password}))
				up.Stop()
				r := keep(get(t, m.URL()+"/v2/private.example/team/app/manifests/v1"))
				wantError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
				wantNoSecrets(t, m, logs, append(secrets, up.IssuedTokens()...), answers)
			})
		})
	}
}

// wantNoSecrets checks that no secret appears in the mirror's log, in its
// answers or in its metrics.
func wantNoSecrets(t *testing.T, m *servertest.Server, logs *fixture.LogBuffer, secrets []string, answers [][]byte) {
	t.Helper()
	metrics := get(t, m.URL()+"/metrics")
	if metrics.status != http.StatusOK {
		t.Fatalf("/metrics: status %d", metrics.status)
	}
	log := logs.Bytes()
	if len(log) == 0 {
		t.Fatal("the mirror logged nothing")
	}
	for _, s := range secrets {
		if bytes.Contains(log, []byte(s)) {
			t.Errorf("a credential (%.6s...) is in the log:\n%s", s, log)
		}
		if bytes.Contains(metrics.body, []byte(s)) {
			t.Errorf("a credential (%.6s...) is in the metrics", s)
		}
		for _, a := range answers {
			if bytes.Contains(a, []byte(s)) {
				t.Errorf("a credential (%.6s...) is in an answer: %s", s, a)
			}
		}
	}
}

// The token upstream's registry checks tokens itself: one signed by
// another key, or for another repository, is refused.
func TestTokenAuthUpstreamVerifiesTokens(t *testing.T) {
	up := fixture.StartTokenAuthUpstream(t, map[string]string{"puller": tokenPassword})
	img := up.SeedImage(t, "team/app", "v1", 1, 4<<10)
	forger := fixture.StartTokenAuthUpstream(t, map[string]string{"puller": tokenPassword})

	token := func(a *fixture.AuthUpstream, repo string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, a.URL()+"/token?service="+fixture.TokenAuthService+"&scope=repository:"+repo+":pull", nil)
		req.SetBasicAuth("puller", tokenPassword)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tokens := a.IssuedTokens()
		return tokens[len(tokens)-1]
	}
	manifest := func(tok string) int {
		t.Helper()
		r := do(t, http.MethodGet, up.URL()+"/v2/team/app/manifests/"+img.Digest, map[string]string{"Authorization": "Bearer " + tok, "Accept": manifestAccept})
		return r.status
	}
	if s := manifest(token(up, "team/app")); s != http.StatusOK {
		t.Errorf("own token: status %d, want 200", s)
	}
	if s := manifest(token(up, "team/other")); s != http.StatusUnauthorized {
		t.Errorf("token for another repository: status %d, want 401", s)
	}
	if s := manifest(token(forger, "team/app")); s != http.StatusUnauthorized {
		t.Errorf("token of another issuer key: status %d, want 401", s)
	}
	if s := do(t, http.MethodGet, up.URL()+"/token", map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("puller:wrong"))}).status; s != http.StatusUnauthorized {
		t.Errorf("token with a wrong password: status %d, want 401", s)
	}
}

// An upstream that sends blobs from another host (a CDN, S3) gets its
// credentials; that host does not, even when it is one the mirror may
// reach (named in the upstream's allow_hosts).
func TestUpstreamCredentialsStayWithTheirHost(t *testing.T) {
	for _, kind := range []fixture.AuthKind{fixture.BasicAuth, fixture.TokenAuth} {
		t.Run(kind.String(), func(t *testing.T) {
			var mu sync.Mutex
			var seen []http.Header
			cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				seen = append(seen, r.Header.Clone())
				mu.Unlock()
				http.NotFound(w, r)
			}))
			t.Cleanup(cdn.Close)
			up := startAuthUpstream(t, kind, map[string]string{"puller": basicPassword}, fixture.WithBlobRedirect(cdn.URL))
			img := up.SeedImage(t, "team/app", "v1", 2, 4<<10)
			hub := fixture.StartUpstream(t)
			m := servertest.StartUpstreams(t, []servertest.Upstream{
				{Host: "docker.io", URL: hub.URL()},
				{Host: "private.example", URL: up.URL(), Auth: authn.FromConfig(authn.AuthConfig{Username: "puller", Password: basicPassword}),
					AllowHosts: []string{cdn.Listener.Addr().String()}}, // so the mirror may reach it
			}, nil)

			wantManifest(t, get(t, m.URL()+"/v2/private.example/team/app/manifests/v1"), img.Manifest, img.MediaType)
			wantRefused(t, get(t, m.URL()+"/v2/private.example/team/app/blobs/"+img.Layers[0])) // the CDN has nothing
			m.WaitIdle()

			mu.Lock()
			defer mu.Unlock()
			if len(seen) == 0 {
				t.Fatal("the upstream's blob redirect was not followed")
			}
			for _, h := range seen {
				if a := h.Get("Authorization"); a != "" {
					t.Errorf("the CDN got the upstream's credentials: Authorization %.12s...", a)
				}
			}
		})
	}
}
