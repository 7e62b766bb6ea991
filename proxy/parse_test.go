package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

func TestParseRange(t *testing.T) {
	cases := []struct {
		h             string
		start, length int64
		ok, bad       bool
	}{
		{"bytes=0-9", 0, 10, true, false},
		{"bytes=5-", 5, 95, true, false},
		{"bytes=-10", 90, 10, true, false},
		{"bytes=-1000", 0, 100, true, false},
		{"bytes=90-1000", 90, 10, true, false},
		{"bytes=99-99", 99, 1, true, false},
		{"bytes=100-", 0, 0, false, true},
		{"bytes=-0", 0, 0, false, true},
		{"bytes=5-4", 0, 0, false, true},
		{"bytes=0-1,3-4", 0, 0, false, false},
		{"bytes=a-b", 0, 0, false, false},
		{"bytes=", 0, 0, false, false},
		{"items=0-1", 0, 0, false, false},
		{"bytes=-", 0, 0, false, false},
	}
	for _, c := range cases {
		s, n, ok, err := parseRange(c.h, 100)
		if ok != c.ok || (err != nil) != c.bad || (ok && (s != c.start || n != c.length)) {
			t.Errorf("parseRange(%q) = %d, %d, %v, %v; want %d, %d, %v, bad=%v", c.h, s, n, ok, err, c.start, c.length, c.ok, c.bad)
		}
	}
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-9", "bytes=-5", "bytes=7-", "bytes=1-0", "bytes=9999999999999999999-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		s, n, ok, err := parseRange(h, size)
		if ok && (err != nil || s < 0 || n <= 0 || s+n > size) {
			t.Fatalf("parseRange(%q, %d) = %d, %d: outside the blob", h, size, s, n)
		}
	})
}

// memStore is a store in memory and an index in a directory of the
// test's, closed when it ends.
func memStore(t *testing.T) (*storage.DriverStore, *storage.Index) {
	t.Helper()
	store, err := storage.OpenDriverStore(t.Context(), "inmemory", nil)
	if err != nil {
		t.Fatal(err)
	}
	index, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = index.Close() })
	// Opened in a synctest bubble, its watcher would tick on the bubble's
	// clock: hours of it took most of the long-fill tests' time.
	index.StopWatchingMapped()
	return store, index
}

// testMirror is a mirror of the upstream at url as docker.io, on store
// (nil: one in memory) and an index of its own, with a spool directory
// and no log, closed when the test ends; opts come after those.
func testMirror(t *testing.T, store storage.Store, url string, opts ...Option) (*Proxy, *upstream.Client, *storage.Index) {
	t.Helper()
	mem, index := memStore(t)
	if store == nil {
		store = mem
	}
	up, err := upstream.New(DefaultHost, url)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(store, index, []*upstream.Client{up},
		append([]Option{WithSpoolDir(t.TempDir()), WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, up, index
}

// storeHit writes body into store (the one beneath a wrapper whose reads a
// test breaks, or p's own) as t's blob, recorded and linked as a fill
// leaves it: its next request is a hit. It returns the blob's digest.
func storeHit(t *testing.T, p *Proxy, tg target, store storage.Store, body []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(body)
	if err := store.Put(t.Context(), tg.storeRepo(), d, int64(len(body)), bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if err := p.index.RecordBlob(tg.host(), tg.repo, d, int64(len(body)), time.Now()); err != nil {
		t.Fatal(err)
	}
	return d
}

// getBlob asks p over HTTP for library/app's blob dgst, with rng as its
// Range header if not empty, and returns the answer and its body read
// whole (err: the read's).
func getBlob(t *testing.T, p *Proxy, dgst digest.Digest, rng string) (resp *http.Response, body []byte, err error) {
	t.Helper()
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/v2/library/app/blobs/"+dgst.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp, body, err
}

func testProxy(t testing.TB) *Proxy {
	hub, err := upstream.New(DefaultHost, "http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(nil, nil, []*upstream.Client{hub})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolve(t *testing.T) {
	p := testProxy(t)
	cases := []struct {
		url, name, repo string
		code            errcode.Code
	}{
		{"/", "nginx", "library/nginx", ""},
		{"/", "library/nginx", "library/nginx", ""},
		{"/", "bitnami/redis", "bitnami/redis", ""},
		{"/", "a/b/c", "a/b/c", ""},
		{"/", "docker.io/nginx", "library/nginx", ""},
		{"/", "index.docker.io/library/nginx", "library/nginx", ""},
		{"/?ns=docker.io", "nginx", "library/nginx", ""},
		{"/?ns=registry-1.docker.io", "area51/jenkins", "area51/jenkins", ""},
		{"/?ns=ghcr.io", "owner/app", "", errcode.NameUnknown},
		{"/", "ghcr.io/owner/app", "", errcode.NameUnknown},
		{"/", "localhost:5000/x", "", errcode.NameUnknown},
		{"/", "169.254.169.254/latest", "", errcode.NameUnknown},
		{"/", "Nginx", "", errcode.NameInvalid},
		{"/", "../etc/passwd", "", errcode.NameInvalid},
		{"/", "a//b", "", errcode.NameInvalid},
		{"/", "", "", errcode.NameInvalid},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, c.url, nil)
		tg, err := p.resolve(r, c.name)
		if c.code != "" {
			if err == nil || errcode.As(err).Code != c.code {
				t.Errorf("resolve(%q%s) = %v, want %s", c.name, c.url, err, c.code)
			}
			continue
		}
		if err != nil || tg.repo != c.repo || tg.host() != DefaultHost {
			t.Errorf("resolve(%q%s) = %+v, %v; want docker.io %s", c.name, c.url, tg, err, c.repo)
		}
	}
}

// multiProxy is a proxy of docker.io and two upstreams whose hosts a
// Docker Hub name could be mistaken for.
func multiProxy(t testing.TB) *Proxy {
	var ups []*upstream.Client
	for _, h := range []string{DefaultHost, "myreg.local", "localhost:5000"} {
		c, err := upstream.New(h, "http://127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		ups = append(ups, c)
	}
	p, err := New(nil, nil, ups)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A docker.io repository whose first component looks like a host is not a
// Docker Hub name (Hub namespaces have no dot, colon or "localhost"): it
// would be stored, and pushed to a destination, under the same path as
// that host's repository (docker.io's myreg.local/app and myreg.local's
// app are both PREFIX/myreg.local/app). It is refused however docker.io is
// named, so every accepted name has a store path of its own.
func TestResolveHubNamesAreNotHosts(t *testing.T) {
	p := multiProxy(t)
	cases := []struct {
		url, name       string
		host, storeRepo string // "" with code
		code            errcode.Code
	}{
		{"/", "myreg.local/app", "myreg.local", "myreg.local/app", ""},
		{"/?ns=myreg.local", "app", "myreg.local", "myreg.local/app", ""},
		{"/", "localhost:5000/app", "localhost:5000", "localhost:5000/app", ""},
		{"/?ns=docker.io", "app", DefaultHost, "library/app", ""},
		{"/?ns=docker.io", "owner/app", DefaultHost, "owner/app", ""},
		{"/", "docker.io/owner/app", DefaultHost, "owner/app", ""},
		// One component is a repository of library/, not a host.
		{"/?ns=docker.io", "localhost", DefaultHost, "library/localhost", ""},
		{"/", "my.app", DefaultHost, "library/my.app", ""},
		// docker.io named by ns, by a path prefix or an alias, with a
		// first component that is a host.
		{"/?ns=docker.io", "myreg.local/app", "", "", errcode.NameInvalid},
		{"/?ns=index.docker.io", "myreg.local/app", "", "", errcode.NameInvalid},
		{"/?ns=docker.io", "localhost/app", "", "", errcode.NameInvalid},
		{"/?ns=docker.io", "localhost:5000/app", "", "", errcode.NameInvalid},
		{"/?ns=docker.io", "docker.io/myreg.local/app", "", "", errcode.NameInvalid},
		{"/?ns=docker.io", "myreg.local/docker.io/app", "", "", errcode.NameInvalid},
		// ns and a path prefix naming the same registry (containerd's
		// override_path): the prefix is not part of the repository.
		{"/?ns=docker.io", "docker.io/library/app", DefaultHost, "library/app", ""},
		{"/?ns=docker.io", "index.docker.io/app", DefaultHost, "library/app", ""},
		{"/?ns=myreg.local", "myreg.local/app", "myreg.local", "myreg.local/app", ""},
		{"/", "docker.io/myreg.local/app", "", "", errcode.NameInvalid},
		{"/", "docker.io/localhost/app", "", "", errcode.NameInvalid},
		{"/", "index.docker.io/myreg.local/app", "", "", errcode.NameInvalid},
		{"/", "registry-1.docker.io/docker.io/app", "", "", errcode.NameInvalid},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, c.url, nil)
		tg, err := p.resolve(r, c.name)
		if c.code != "" {
			if err == nil || errcode.As(err).Code != c.code || errcode.As(err).Status() != http.StatusBadRequest {
				t.Errorf("resolve(%q%s) = %+v, %v; want %s, 400", c.name, c.url, tg, err, c.code)
			}
			continue
		}
		if err != nil || tg.host() != c.host || tg.storeRepo() != c.storeRepo {
			t.Errorf("resolve(%q%s) = %+v, %v; want %s stored as %s", c.name, c.url, tg, err, c.host, c.storeRepo)
		}
	}
}

// The same for the references prefetch, sync and the mirror command take:
// reference.ParseNormalizedNamed reads docker.io/myreg.local/app as
// docker.io's repository myreg.local/app.
func TestParseImageHubNamesAreNotHosts(t *testing.T) {
	p := multiProxy(t)
	cases := []struct {
		ref, host, storeRepo string
		code                 errcode.Code
	}{
		{"nginx:1", DefaultHost, "library/nginx", ""},
		{"owner/app:1", DefaultHost, "owner/app", ""},
		{"docker.io/owner/app", DefaultHost, "owner/app", ""},
		{"myreg.local/app:1", "myreg.local", "myreg.local/app", ""},
		{"localhost:5000/app", "localhost:5000", "localhost:5000/app", ""},
		{"docker.io/myreg.local/app:1", "", "", errcode.NameInvalid},
		{"docker.io/localhost/app", "", "", errcode.NameInvalid},
		{"index.docker.io/myreg.local/app", "", "", errcode.NameInvalid},
		{"registry-1.docker.io/docker.io/library/app", "", "", errcode.NameInvalid},
	}
	for _, c := range cases {
		im, err := p.parseImage(c.ref)
		if c.code != "" {
			if err == nil || errcode.As(err).Code != c.code || errcode.As(err).Status() != http.StatusBadRequest {
				t.Errorf("parseImage(%q) = %+v, %v; want %s, 400", c.ref, im.t, err, c.code)
			}
			continue
		}
		if err != nil || im.t.host() != c.host || im.t.storeRepo() != c.storeRepo {
			t.Errorf("parseImage(%q) = %+v, %v; want %s stored as %s", c.ref, im.t, err, c.host, c.storeRepo)
		}
	}
	// Sync refuses such a reference before asking docker.io for its tags
	// or recording a job.
	for _, entry := range []string{"docker.io/myreg.local/app:1.*", "docker.io/myreg.local/app:1"} {
		if _, err := p.SyncOnce(t.Context(), Sync{Images: []string{entry}}); err == nil || errcode.As(err).Code != errcode.NameInvalid {
			t.Errorf("sync %q: %v, want %s", entry, err, errcode.NameInvalid)
		}
	}
}

// No request name can make the proxy pick an upstream that is not
// configured, nor a repository that is not a valid name.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{"nginx", "library/nginx", "ghcr.io/a/b", "localhost:5000/x", "a/../b", "docker.io/x"} {
		f.Add(s, "")
		f.Add(s, "ghcr.io")
	}
	f.Add("myreg.local/app", "docker.io")
	f.Add("docker.io/localhost/app", "")
	p := testProxy(f)
	f.Fuzz(func(t *testing.T, name, ns string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		q := r.URL.Query()
		q.Set("ns", ns)
		r.URL.RawQuery = q.Encode()
		tg, err := p.resolve(r, name)
		if err != nil {
			if c := errcode.As(err).Code; c != errcode.NameInvalid && c != errcode.NameUnknown {
				t.Fatalf("resolve(%q, ns=%q): unexpected code %s", name, ns, c)
			}
			return
		}
		if tg.up != p.upstreams[DefaultHost] {
			t.Fatalf("resolve(%q, ns=%q) reached an unconfigured upstream", name, ns)
		}
		if _, err := reference.WithName(tg.repo); err != nil {
			t.Fatalf("resolve(%q, ns=%q) = repository %q, not a valid name", name, ns, tg.repo)
		}
		if first, _, ok := strings.Cut(tg.repo, "/"); ok && looksLikeHost(first) {
			t.Fatalf("resolve(%q, ns=%q) = docker.io repository %q, whose store path is another host's", name, ns, tg.repo)
		}
	})
}

func TestSelectChildren(t *testing.T) {
	p := testProxy(t)
	amd := v1.Descriptor{Digest: "sha256:a", Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}
	arm := v1.Descriptor{Digest: "sha256:b", Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}
	win := v1.Descriptor{Digest: "sha256:c", Platform: &v1.Platform{OS: "windows", Architecture: "amd64"}}
	att := func(d, ref string) v1.Descriptor {
		return v1.Descriptor{Digest: digest.Digest("sha256:" + d), Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"},
			Annotations: map[string]string{oci.AnnotationReferenceType: oci.ReferenceTypeAttestation, oci.AnnotationReferenceDigest: ref}}
	}
	entries := []v1.Descriptor{amd, arm, win, att("1", "sha256:a"), att("2", "sha256:c")}
	got, names := selectChildren(entries, p.platforms)
	if len(got) != 3 || got[0].Digest != amd.Digest || got[1].Digest != arm.Digest || got[2].Annotations[oci.AnnotationReferenceDigest] != "sha256:a" {
		t.Fatalf("selected %v", got)
	}
	if len(names) != 2 || names[0] != "linux/amd64" || names[1] != "linux/arm64" {
		t.Fatalf("platform names %v", names)
	}
}

func TestAccepts(t *testing.T) {
	h := http.Header{}
	if !accepts(h, oci.MediaTypeOCIIndex) {
		t.Error("no Accept must accept anything")
	}
	h.Add("Accept", "application/vnd.docker.distribution.manifest.v2+json; q=0.9, application/vnd.oci.image.manifest.v1+json")
	if accepts(h, oci.MediaTypeOCIIndex) {
		t.Error("index accepted by a client that lists only image manifests")
	}
	h.Add("Accept", oci.MediaTypeOCIIndex)
	if !accepts(h, oci.MediaTypeOCIIndex) {
		t.Error("second Accept header ignored")
	}
}

// Docker Hub's other names in a reference prefetch, sync or the mirror
// command take name its official images as docker.io does: nginx is
// library/nginx through registry-1.docker.io and registry.hub.docker.com
// too (reference.ParseNormalizedNamed adds library/ for docker.io and
// index.docker.io only), not a repository nginx Docker Hub does not have.
func TestParseImageHubAliasesOfficialImages(t *testing.T) {
	p := multiProxy(t)
	for _, ref := range []string{"nginx:1", "index.docker.io/nginx:1", "registry-1.docker.io/nginx:1", "registry.hub.docker.com/nginx:1"} {
		im, err := p.parseImage(ref)
		if err != nil || im.t.host() != DefaultHost || im.t.repo != "library/nginx" || im.ref.Tag != "1" {
			t.Errorf("parseImage(%q) = %+v %+v, %v; want docker.io's library/nginx:1", ref, im.t, im.ref, err)
		}
	}
}
