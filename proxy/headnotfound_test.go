package proxy

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// An upstream that answers a tag's HEAD 404 while its GET answers the
// manifest (a Nexus or Artifactory proxy repository, whose HEAD does not
// fetch from its own remote) still has the tag: a revalidation does not
// forget it, and the pull that asked is answered, as a direct pull (a
// GET) would be.
func TestRevalidationHeadNotFoundAskedByGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	var armed atomic.Bool
	front := frontOf(t, up, func(w http.ResponseWriter, r *http.Request) bool {
		if !armed.Load() || r.Method != http.MethodHead || r.URL.Path != "/v2/library/app/manifests/v1" {
			return false
		}
		w.WriteHeader(http.StatusNotFound)
		return true
	})
	p, _, ix := testMirror(t, nil, front, WithTagTTL(0))
	pull := func() {
		t.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/v1", nil)
		req.Header.Set("Accept", img.MediaType)
		p.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Body.String() != string(img.Manifest) {
			t.Fatalf("GET v1: %d %s; want 200 and the manifest", rec.Code, rec.Body)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	pull()
	armed.Store(true)
	pull()
	if rec, ok, err := ix.Tag(DefaultHost, "library/app", "v1"); err != nil || !ok || rec.Digest != digest.Digest(img.Digest) {
		t.Fatalf("tag record after a HEAD answered 404 and a GET the manifest: %+v %v %v; want it kept", rec, ok, err)
	}
}

// frontOf serves up behind a front that lets answer take a request first
// (it returns whether it answered it), and returns the front's URL.
func frontOf(t *testing.T, up *fixture.Upstream, answer func(w http.ResponseWriter, r *http.Request) bool) string {
	t.Helper()
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !answer(w, r) {
			rp.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(front.Close)
	return front.URL
}

// headNotFoundFront serves up behind a front answering every blob HEAD
// 404 while GETs serve the blobs, as a Nexus or Artifactory proxy
// repository does for a blob its HEAD does not fetch from its remote; it
// returns the front's URL and the count of HEADs it so answered.
func headNotFoundFront(t *testing.T, up *fixture.Upstream) (string, *atomic.Int64) {
	t.Helper()
	var heads atomic.Int64
	return frontOf(t, up, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		heads.Add(1)
		w.WriteHeader(http.StatusNotFound)
		return true
	}), &heads
}

// A blob stored for one repository, asked for another whose upstream
// answers the blob's HEAD 404 but its GET with the blob (the proxy
// repositories above) is served: the HEAD alone does not tell
// that the repository lacks it, as a direct pull would not be told.
func TestSharedBlobHeadNotFoundAskedByGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	layer := bytes.Repeat([]byte("shared base layer "), 1<<10)
	d := up.PushBlob(t, "library/a", layer)
	up.PushBlob(t, "library/b", layer)
	frontURL, headsRefused := headNotFoundFront(t, up)
	p, _, _ := testMirror(t, nil, frontURL)
	for _, repo := range []string{"a", "b"} {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/"+repo+"/blobs/"+d, nil))
		if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), layer) {
			t.Fatalf("GET library/%s's blob: %d %.200s; want 200 and the blob", repo, rec.Code, rec.Body)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if headsRefused.Load() == 0 {
		t.Fatal("the stored blob was served for library/b without asking the upstream: the test shows nothing")
	}
}

// A conditional GET (If-None-Match: its ETag, a cache in front
// revalidating) of a blob the mirror does not hold, through an upstream
// that answers the blob's HEAD 404 but its GET with the blob (the proxy
// repositories above), is answered 304, as a direct GET would be: the
// HEAD's 404 alone does not tell, and a 404 has the cache drop the blob.
func TestConditionalBlobHeadNotFoundAskedByGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	layer := bytes.Repeat([]byte("revalidated layer "), 1<<10)
	d := up.PushBlob(t, "library/a", layer)
	frontURL, headsRefused := headNotFoundFront(t, up)
	p, _, _ := testMirror(t, nil, frontURL)
	rec := httptest.NewRecorder()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/a/blobs/"+d, nil)
	req.Header.Set("If-None-Match", `"`+d+`"`)
	p.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Fatalf("conditional GET of the blob: %d %.200s; want 304", rec.Code, rec.Body)
	}
	if headsRefused.Load() == 0 {
		t.Fatal("the upstream was not asked with a HEAD: the test shows nothing")
	}
}

// A blob being downloaded for one repository, asked for another whose
// upstream answers the blob's HEAD 404 but its GET with the blob (the
// proxy repositories above), is served from the download: the HEAD alone
// does not tell that the repository lacks it, as it does not once the
// blob is stored (TestSharedBlobHeadNotFoundAskedByGet).
func TestDownloadingBlobHeadNotFoundAskedByGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	layer := bytes.Repeat([]byte("shared base layer, downloading "), 1<<10)
	d := up.PushBlob(t, "library/a", layer)
	up.PushBlob(t, "library/b", layer)
	reached, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	front := frontOf(t, up, func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/blobs/"):
			// b's blob asked while a's download waits: it may go on.
			releaseOnce.Do(func() { close(release) })
			w.WriteHeader(http.StatusNotFound)
			return true
		case r.Method == http.MethodGet && r.URL.Path == "/v2/library/a/blobs/"+d:
			close(reached)
			<-release
		}
		return false
	})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	p, _, _ := testMirror(t, nil, front)
	get := func(repo string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/"+repo+"/blobs/"+d, nil))
		return rec
	}
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- get("a") }()
	<-reached
	rec := get("b")
	releaseOnce.Do(func() { close(release) })
	if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), layer) {
		t.Errorf("GET library/b's blob while library/a's download ran: %d %.200s; want 200 and the blob", rec.Code, rec.Body)
	}
	if rec := <-first; rec.Code != http.StatusOK {
		t.Errorf("GET library/a's blob: %d", rec.Code)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// An image's fill through an upstream that answers a blob's HEAD 404 but
// its GET with the blob (the proxy repositories above), of a layer stored
// already for another upstream, links it and completes: the HEAD alone
// does not tell that the repository lacks the layer, as it does not for a
// client's GET of it (TestSharedBlobHeadNotFoundAskedByGet).
func TestFillOfBlobStoredForAnotherUpstreamHeadNotFoundAskedByGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	frontURL, headsRefused := headNotFoundFront(t, up)
	const nexus = "nexus.example"
	nx, err := upstream.New(nexus, frontURL)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := upstream.New(DefaultHost, up.URL())
	if err != nil {
		t.Fatal(err)
	}
	store, ix := memStore(t)
	p, err := New(store, ix, []*upstream.Client{hub, nx}, WithSpoolDir(t.TempDir()), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	for _, path := range []string{"/v2/library/app/manifests/v1", "/v2/" + nexus + "/library/app/manifests/v1"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil)
		req.Header.Set("Accept", img.MediaType)
		p.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Body.String() != string(img.Manifest) {
			t.Fatalf("GET %s: %d %.200s; want 200 and the manifest", path, rec.Code, rec.Body)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if headsRefused.Load() == 0 {
		t.Fatal("the stored layers were linked without asking the upstream: the test shows nothing")
	}
	if rec, ok, err := ix.Fill(nexus, "library/app", digest.Digest(img.Digest)); err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("fill record of %s's image: %+v %v %v; want it complete", nexus, rec, ok, err)
	}
	for _, b := range img.Blobs() {
		if linked, err := ix.Linked(nexus, "library/app", digest.Digest(b)); err != nil || !linked {
			t.Errorf("blob %s linked to %s's repository: %v, %v; want it linked", b, nexus, linked, err)
		}
	}
}

// A blob a registry destination holds for one repository, asked for
// another whose upstream answers the blob's HEAD 404 but its GET with the
// blob (the proxy repositories above), is mounted into it from the
// first and served from there: the HEAD alone does not tell that the
// repository lacks it, and taking it so had the blob downloaded from the
// upstream again, bytes the destination held already. The upstream's
// body for the second repository is corrupt here, to show that it is not
// the one served.
func TestHeldBlobHeadNotFoundMountedAfterAGet(t *testing.T) {
	up := fixture.StartUpstream(t)
	layer := bytes.Repeat([]byte("shared base layer, held "), 1<<10)
	d := up.PushBlob(t, "library/a", layer)
	up.PushBlob(t, "library/b", layer)
	frontURL, headsRefused := headNotFoundFront(t, up)
	dest := fixture.StartDestination(t, nil)
	store, err := destination.New(dest.URL() + "/mirror")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.CloseIdleConnections)
	p, _, _ := testMirror(t, store, frontURL)
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)
	for _, repo := range []string{"a", "b"} {
		if repo == "b" {
			up.SetFault(fixture.Fault{Method: http.MethodGet, PathContains: "/library/b/blobs/", Corrupt: true})
		}
		resp, err := srv.Client().Get(srv.URL + "/v2/library/" + repo + "/blobs/" + d)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, layer) {
			t.Fatalf("GET library/%s's blob: %d %.200s, %v; want 200 and the blob", repo, resp.StatusCode, body, err)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if headsRefused.Load() == 0 {
		t.Fatal("library/b's blob was taken without asking the upstream: the test shows nothing")
	}
	if got, err := store.Stat(t.Context(), "library/b", digest.Digest(d)); err != nil || got != int64(len(layer)) {
		t.Errorf("destination's library/b: Stat = %d, %v; want the blob", got, err)
	}
	mounted := false
	for _, r := range dest.Requests() {
		if !r.IsUpload() || !strings.HasPrefix(r.Path, "/v2/mirror/library/b/") {
			continue
		}
		if r.Method == http.MethodPost && strings.Contains(r.Query, "mount=") && r.Status == http.StatusCreated {
			mounted = true
		} else if r.Method != http.MethodPost {
			t.Errorf("blob uploaded to library/b (%+v); want it mounted from library/a", r)
		}
	}
	if !mounted {
		t.Error("blob not mounted into library/b from library/a")
	}
}

// What was found of a repository alone (tagHeads.probed) is kept for
// headProbeAgain, after which it is tried again, not for the life of the
// process: a mirror of an upstream whose HEADs are never found out (its
// tags lists refused, a Nexus or Artifactory repository to a user not
// allowed to list) kept an entry for every repository ever pulled
// through it, its memory growing for ever.
func TestTagHeadsForgetWhatIsTriedAgain(t *testing.T) {
	var th tagHeads
	now := time.Now()
	const perHour = 1000
	for hour := range 10 {
		for i := range perHour {
			key := fmt.Sprintf("nexus.example/hour%d/repo%d", hour, i)
			if _, first := th.probe(key, now); !first {
				t.Fatalf("%s tried before", key)
			}
			th.untestable(key)
		}
		now = now.Add(headProbeAgain)
	}
	if n := len(th.probed); n > 2*perHour {
		t.Errorf("%d repositories tried, %d an hour: %d remembered, want at most %d", 10*perHour, perHour, n, 2*perHour)
	}
	// What is remembered still holds.
	if v, first := th.probe("nexus.example/hour9/repo0", now.Add(-time.Minute)); first || v != headUntestable {
		t.Errorf("a repository tried 59 minutes ago: %v, tried again %v; want headUntestable, not tried again", v, first)
	}
}
