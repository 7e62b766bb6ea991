package proxy

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// An upstream whose /v2/ answers 404 (a reverse proxy in front of it
// misrouting, a maintenance page) has said nothing of any tag: a mirror
// started meanwhile, whose first request to it is that ping, serves the
// tags it holds from its cache and keeps them. Before, the ping's 404 was
// taken for the tag's: every stale tag pulled was forgotten and answered
// 404.
func TestPingNotFoundKeepsCachedTags(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	var broken atomic.Bool
	front := frontOf(t, up, func(w http.ResponseWriter, r *http.Request) bool {
		if !broken.Load() || r.URL.Path != "/v2/" {
			return false
		}
		http.NotFound(w, r)
		return true
	})
	store, index := memStore(t)
	start := func() *Proxy {
		c, err := upstream.New(DefaultHost, front)
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(store, index, []*upstream.Client{c}, WithTagTTL(0), WithSpoolDir(t.TempDir()), WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	pull := func(p *Proxy) *httptest.ResponseRecorder {
		t.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
		req.Header.Set("Accept", img.MediaType)
		p.Handler().ServeHTTP(rec, req)
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	if rec := pull(start()); rec.Code != http.StatusOK {
		t.Fatalf("first pull: %d %s", rec.Code, rec.Body)
	}
	broken.Store(true)
	if rec := pull(start()); rec.Code != http.StatusOK || rec.Header().Get("Docker-Content-Digest") != img.Digest {
		t.Errorf("pull after a restart, /v2/ answering 404: %d %s; want the cached %s", rec.Code, rec.Body, img.Digest)
	}
	if rec, ok, err := index.Tag(DefaultHost, "library/app", "v1"); err != nil || !ok || rec.Digest != digest.Digest(img.Digest) {
		t.Errorf("tag record after /v2/ answered 404: %+v %v %v; want it kept", rec, ok, err)
	}
	// So does its list of tags: the cached ones, as with the upstream down.
	rec := httptest.NewRecorder()
	start().Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/tags/list", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"v1"`) || rec.Header().Get("X-Cache") != "stale" {
		t.Errorf("tags list after a restart, /v2/ answering 404: %d %s (X-Cache %q); want the cached tags, stale", rec.Code, rec.Body, rec.Header().Get("X-Cache"))
	}
}
