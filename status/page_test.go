package status_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// listed is a Lister of given images.
type listed []lifecycle.Image

func (l listed) Images(context.Context) ([]lifecycle.Image, error) { return l, nil }

// synthetic returns n images in repositories of the docker.io upstream.
func synthetic(n int) listed {
	out := make(listed, n)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range out {
		out[i] = lifecycle.Image{Upstream: "docker.io", Repo: fmt.Sprintf("team%03d/app%05d", i%100, i), Tags: []string{"v1", fmt.Sprintf("build-%d", i)},
			Digest: digest.FromString(fmt.Sprint(i)), Platforms: []string{"linux/amd64", "linux/arm64"}, Size: int64(i%977) << 20,
			LastPull: base.Add(time.Duration(i%1013) * time.Minute), State: "complete", Manifests: 3, Blobs: 8}
	}
	return out
}

// pageServer serves the status page of a mirror with the images l lists.
func pageServer(t testing.TB, l status.Lister) (*servertest.Server, http.Handler) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	h := status.New(status.Deps{Proxy: m.Proxy, Index: m.Index, Lister: l, Version: "test", StoreKind: "filesystem", DataDir: m.Dir(), Now: m.Clock.Now})
	t.Cleanup(h.Close)
	return m, m.Proxy.Handler(h.Routes)
}

func serveGet(t testing.TB, h http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

// Whatever an upstream controls (repository names and tags from a
// lister, error messages, platforms) renders as text, never as markup.
func TestPageEscaping(t *testing.T) {
	evil := `<script>alert("x")</script>`
	l := listed{{Upstream: "docker.io", Repo: "evil/" + evil, Tags: []string{evil}, Digest: digest.FromString("evil"), Platforms: []string{evil}}}
	_, h := pageServer(t, l)
	rec := serveGet(t, h, "/")
	body := rec.Body.String()
	if rec.Code != 200 || strings.Contains(body, evil) || !strings.Contains(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
		t.Fatalf("GET /: %d\n%s", rec.Code, body)
	}
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Errorf("headers %v", rec.Header())
	}
	// The link to its page escapes the name as a path.
	if !strings.Contains(body, `href="/images/docker.io/evil/%3Cscript%3Ealert%28%22x%22%29%3C/script%3E"`) {
		t.Errorf("no escaped link in\n%s", body)
	}
	rec = serveGet(t, h, "/?q="+evil)
	if strings.Contains(rec.Body.String(), evil) {
		t.Errorf("the query is echoed as markup")
	}
}

// An upstream's error message and an index's platforms are shown as text.
func TestPageEscapingUpstream(t *testing.T) {
	evil := `<script>alert("x")</script>`
	up := fixture.StartUpstream(t)
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusInternalServerError, Message: evil})
	m := servertest.Start(t, up.URL())
	send(t, http.MethodGet, m.URL()+"/v2/library/multi/manifests/v1", "", nil)
	a := send(t, http.MethodGet, m.URL()+"/", "", nil)
	if a.status != 200 || strings.Contains(string(a.body), evil) || !strings.Contains(string(a.body), "&lt;script&gt;") {
		t.Fatalf("GET /: %d\n%s", a.status, a.body)
	}
}

// The page shows what the mirror did: the images, the traffic, the store
// and the jobs; an image's page its manifests and blobs.
func TestPageContent(t *testing.T) {
	m := startMirror(t)
	m.fill(t, nil)
	a := send(t, http.MethodGet, m.URL()+"/", "", nil)
	body := string(a.body)
	for _, want := range []string{"docker.io/library/multi", "docker.io/area51/jenkins", `id="hit-ratio">66.7%`, "left out: windows/amd64", m.job, "state-done", `data-action="unpin"`, `data-action="evict"`, `id="prefetch-form"`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	a = send(t, http.MethodGet, m.URL()+"/?q=jenkins", "", nil)
	if strings.Contains(string(a.body), "library/multi</a>") {
		t.Error("the filter does not filter")
	}
	a = send(t, http.MethodGet, m.URL()+"/images/docker.io/library/multi", "", nil)
	body = string(a.body)
	for _, want := range []string{m.multi.Digest, m.multi.SharedLayer, "linux/arm/v7", "left out: windows/amd64"} {
		if !strings.Contains(body, want) {
			t.Errorf("image page lacks %q", want)
		}
	}
	for _, f := range []string{"/ui/status.css", "/ui/status.js", "/ui/favicon.svg"} {
		if a := send(t, http.MethodGet, m.URL()+f, "", nil); a.status != 200 || len(a.body) == 0 {
			t.Errorf("GET %s: %d", f, a.status)
		}
	}
	if a := send(t, http.MethodGet, m.URL()+"/ui/nope.js", "", nil); a.status != 404 {
		t.Errorf("GET a missing file: %d", a.status)
	}
}

// A page past the last shows no image, however far past: a page number
// whose first image's position overflows does not wrap around to the
// first page.
func TestImagesPagePastTheEnd(t *testing.T) {
	_, h := pageServer(t, synthetic(3))
	for _, page := range []string{"3", "4611686018427387905", "9223372036854775807"} {
		rec := serveGet(t, h, "/api/v1/images?n=2&page="+page)
		var p status.Page
		if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("page %s: %d %s", page, rec.Code, rec.Body)
		}
		if p.Total != 3 || len(p.Images) != 0 {
			t.Errorf("page %s of 2: %d images of %d, want none", page, len(p.Images), p.Total)
		}
	}
}

// Paging and filtering 10,000 images: the list is read once (and again
// every ImagesMaxAge); a request filters, sorts and pages a copy in memory.
func BenchmarkImagesPage(b *testing.B) {
	_, h := pageServer(b, synthetic(10_000))
	serveGet(b, h, "/api/v1/images") // the list is read once, here
	for _, bc := range []struct{ name, path string }{
		{"api-by-size", "/api/v1/images?sort=size&page=7&n=50"},
		{"api-filter", "/api/v1/images?q=app0999&sort=pulled"},
		{"html-page", "/?sort=pulled&page=3"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if rec := serveGet(b, h, bc.path); rec.Code != 200 {
					b.Fatal(rec.Code, rec.Body.String())
				}
			}
		})
	}
}

// Signed and attested: from the referrers the mirror recorded, or from
// cosign's sha256-<hex>.sig/.att tags in the same repository.
func TestSignedAttested(t *testing.T) {
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.FromString("c")
	cosign := func(d digest.Digest, suffix string) string { return "sha256-" + d.Encoded() + suffix }
	l := listed{
		{Upstream: "docker.io", Repo: "x/referred", Tags: []string{"1"}, Digest: a},
		{Upstream: "docker.io", Repo: "x/tagged", Tags: []string{"1"}, Digest: b},
		{Upstream: "docker.io", Repo: "x/tagged", Tags: []string{cosign(b, ".sig"), cosign(b, ".att")}, Digest: digest.FromString("sig")},
		{Upstream: "docker.io", Repo: "x/plain", Tags: []string{"1"}, Digest: c},
		// The tag of another repository says nothing.
		{Upstream: "docker.io", Repo: "x/other", Tags: []string{cosign(c, ".sig")}, Digest: digest.FromString("sig2")},
	}
	m, h := pageServer(t, l)
	body := `{"manifests": [{"artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json"}, {"artifactType": "application/vnd.in-toto+json"}]}`
	if err := m.Index.PutReferrers("docker.io", "x/referred", a, "", storage.ReferrersRecord{Body: []byte(body)}); err != nil {
		t.Fatal(err)
	}
	var pg status.Page
	if err := json.Unmarshal(serveGet(t, h, "/api/v1/images?n=10").Body.Bytes(), &pg); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, im := range pg.Images {
		got[im.Name+"@"+im.Digest.Encoded()[:4]] = fmt.Sprint(im.Signed, im.Attested)
	}
	want := map[string]string{
		"docker.io/x/referred@" + a.Encoded()[:4]: "true true",
		"docker.io/x/tagged@" + b.Encoded()[:4]:   "true true",
		"docker.io/x/plain@" + c.Encoded()[:4]:    "false false",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: signed, attested = %s, want %s", k, got[k], v)
		}
	}
}

// counting is a Lister that counts its reads.
type counting struct {
	listed
	mu sync.Mutex
	n  int
}

func (c *counting) Images(ctx context.Context) ([]lifecycle.Image, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.listed.Images(ctx)
}

func (c *counting) reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// The image list is read once, and again only once the index changed and
// the copy is older than ImagesMaxAge: in the background while it is less
// than 4 times that old, before answering after. The page's refresh and
// the status never wait for it: they have it read in the background.
func TestImageListCache(t *testing.T) {
	l := &counting{listed: synthetic(3)}
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	h := status.New(status.Deps{Proxy: m.Proxy, Index: m.Index, Lister: l, Now: m.Clock.Now, ImagesMaxAge: time.Minute})
	hd := m.Proxy.Handler(h.Routes)
	write := func() {
		if err := m.Index.Pin(t.Context(), digest.FromString(time.Now().String()).String(), storage.PinRecord{}); err != nil {
			t.Fatal(err)
		}
	}
	serveGet(t, hd, "/api/v1/images")
	serveGet(t, hd, "/")
	if n := l.reads(); n != 1 {
		t.Fatalf("%d reads, want 1", n)
	}
	m.Clock.Advance(2 * time.Minute) // old, but nothing changed
	serveGet(t, hd, "/api/v1/images")
	if n := l.reads(); n != 1 {
		t.Fatalf("unchanged index: %d reads, want 1", n)
	}
	write()
	serveGet(t, hd, "/?live=1") // answered from the copy; read again in the background
	serveGet(t, hd, "/api/v1/status")
	serveGet(t, hd, "/api/v1/images")
	h.Close() // waits for that read
	if n := l.reads(); n != 2 {
		t.Fatalf("changed index: %d reads, want 2", n)
	}
	write()
	m.Clock.Advance(5 * time.Minute)
	serveGet(t, hd, "/api/v1/images") // far out of date: read before answering
	if n := l.reads(); n != 3 {
		t.Fatalf("far out of date: %d reads, want 3", n)
	}
}

// Without a collector (a registry destination) evicting is not offered:
// an admin sees Pin, not an Evict button that would answer 405.
func TestPageOffersNoEvictWithoutCollector(t *testing.T) {
	_, h := pageServer(t, synthetic(1))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/actions/evict",
		strings.NewReader(`{"upstream": "docker.io", "repo": "team000/app00000", "digest": "`+digest.FromString("0").String()+`"}`)))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("evict without a collector: %d %s", rec.Code, rec.Body)
	}
	for _, path := range []string{"/", "/images/docker.io/team000/app00000"} {
		body := serveGet(t, h, path).Body.String()
		if !strings.Contains(body, `data-action="pin"`) || strings.Contains(body, `data-action="evict"`) {
			t.Errorf("GET %s: want a pin button and no evict button\n%s", path, body)
		}
	}
}

// A size an upstream gives is shown whatever it is: an index entry of a
// platform left out (never fetched, so never checked) with a negative
// size does not fail the image's page.
func TestImagePageNegativeSize(t *testing.T) {
	up := fixture.StartUpstream(t)
	multi := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	var idx map[string]any
	if err := json.Unmarshal(multi.Index, &idx); err != nil {
		t.Fatal(err)
	}
	for _, e := range idx["manifests"].([]any) {
		e := e.(map[string]any)
		if p, _ := e["platform"].(map[string]any); p["os"] == "windows" {
			e["size"] = -4096
		}
	}
	raw, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, "library/multi", "v1", multi.MediaType, raw)
	m := servertest.Start(t, up.URL())
	h := status.New(status.Deps{Proxy: m.Proxy, Index: m.Index, Now: m.Clock.Now})
	t.Cleanup(h.Close)
	hd := m.Proxy.Handler(h.Routes)
	req := httptest.NewRequest(http.MethodGet, "/v2/library/multi/manifests/v1", nil)
	req.Header.Set("Accept", multi.MediaType)
	rec := httptest.NewRecorder()
	hd.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("pull: %d %s", rec.Code, rec.Body)
	}
	m.WaitIdle()
	rec = serveGet(t, hd, "/images/docker.io/library/multi")
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "-4.0 KiB") {
		t.Errorf("GET the image's page: %d %s", rec.Code, rec.Body)
	}
}
