package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// gatedStore holds the first Put of chosen digests until the test
// releases it (and then fails it with the error given, if any): the window
// between a manifest's answer and its record stays open as long as the
// test needs.
type gatedStore struct {
	storage.Store
	mu    sync.Mutex
	gates map[digest.Digest]*putGate
}

type putGate struct {
	reached chan struct{} // closed when the Put arrives
	release chan error    // the Put's outcome (nil: store it)
	used    bool
}

func (s *gatedStore) gate(dgst string) *putGate {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gates == nil {
		s.gates = map[digest.Digest]*putGate{}
	}
	g := &putGate{reached: make(chan struct{}), release: make(chan error, 1)}
	s.gates[digest.Digest(dgst)] = g
	return g
}

// open releases every gate not released yet.
func (s *gatedStore) open() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.gates {
		select {
		case g.release <- nil:
		default:
		}
	}
}

func (s *gatedStore) Put(ctx context.Context, repo string, dgst digest.Digest, size int64, r io.Reader) error {
	s.mu.Lock()
	g := s.gates[dgst]
	first := g != nil && !g.used
	if first {
		g.used = true
	}
	s.mu.Unlock()
	if first {
		close(g.reached)
		if err := <-g.release; err != nil {
			return err
		}
	}
	return s.Store.Put(ctx, repo, dgst, size, r)
}

// writesFixture is a proxy on a gated store in front of a counting
// upstream, served over HTTP.
type writesFixture struct {
	up    *fixture.Upstream
	store *gatedStore
	index *storage.Index
	p     *Proxy
	url   string
	logs  *fixture.LogBuffer
}

func newWritesFixture(t *testing.T) *writesFixture {
	t.Helper()
	f := &writesFixture{up: fixture.StartUpstream(t), logs: &fixture.LogBuffer{}}
	mem, index := memStore(t)
	f.store, f.index = &gatedStore{Store: mem}, index
	up, err := upstream.New(DefaultHost, f.up.URL())
	if err != nil {
		t.Fatal(err)
	}
	f.p, err = New(f.store, f.index, []*upstream.Client{up}, WithSpoolDir(t.TempDir()),
		WithLogger(slog.New(slog.NewTextHandler(f.logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.p.Handler())
	f.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		f.p.Close()
	})
	t.Cleanup(f.store.open) // first: a failed test's held writes end
	return f
}

// manifestRequests counts the upstream's manifest requests (any method)
// for reference (a tag or a digest) of repo.
func (f *writesFixture) manifestRequests(repo, reference string) int {
	n := 0
	for _, r := range f.up.Requests() {
		if r.Kind == fixture.KindManifest && strings.HasSuffix(r.Path, "/"+repo+"/manifests/"+reference) {
			n++
		}
	}
	return n
}

func (f *writesFixture) waitIdle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // fail, not hang
	defer cancel()
	if err := f.p.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
}

// recv waits for ch to be closed or sent on; a regression fails the test
// instead of hanging it.
func recv[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("still waiting for %s", what)
	}
}

// request sends a manifest request and checks that it is answered 200
// with want's bytes and headers (a HEAD without a body).
func (f *writesFixture) request(t *testing.T, method, path string, want []byte, mediaType, wantCache string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // fail, not hang, on a regression
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, f.url+path, nil)
	if err != nil {
		t.Error(err)
		return
	}
	req.Header.Set("Accept", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return
	}
	if method == http.MethodHead {
		body = want
	}
	switch {
	case resp.StatusCode != http.StatusOK:
		t.Errorf("%s %s: %d %s", method, path, resp.StatusCode, body)
	case !bytes.Equal(body, want):
		t.Errorf("%s %s: not the manifest's bytes: %.200s", method, path, body)
	case resp.Header.Get("Docker-Content-Digest") != digest.FromBytes(want).String() || resp.Header.Get("Content-Type") != mediaType:
		t.Errorf("%s %s: Docker-Content-Digest %q, Content-Type %q", method, path, resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("Content-Type"))
	case wantCache != "" && resp.Header.Get(cacheHeader) != wantCache:
		t.Errorf("%s %s: X-Cache %q, want %q", method, path, resp.Header.Get(cacheHeader), wantCache)
	}
}

// A manifest is answered before it is stored and recorded; until it is,
// every request for it (by digest, by tag, HEAD, from other clients, many
// at once) is answered from memory, and none reaches the upstream: the
// upstream sees the one GET of the first pull. The index records nothing
// until the write is done, and then the tag, the manifest and its pull.
func TestManifestServedFromMemoryWhileItIsWritten(t *testing.T) {
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	g := f.store.gate(img.Digest)

	// containerd's order: HEAD by tag, then GET by digest.
	f.request(t, http.MethodHead, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	recv(t, g.reached, "the write") // the answer came while its write is held
	f.request(t, http.MethodGet, "/v2/library/app/manifests/"+img.Digest, img.Manifest, img.MediaType, "hit")
	f.request(t, http.MethodHead, "/v2/library/app/manifests/"+img.Digest, img.Manifest, img.MediaType, "hit")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "hit")
		})
	}
	wg.Wait()
	if _, ok, err := f.index.Tag(DefaultHost, "library/app", "v1"); err != nil || ok {
		t.Fatalf("tag recorded while its manifest's write is held: %v %v", ok, err)
	}
	if at, _ := f.index.ManifestAccess(digest.Digest(img.Digest)); !at.IsZero() {
		t.Errorf("a pull of a manifest not yet recorded was noted: %v", at)
	}

	g.release <- nil
	f.waitIdle(t)
	if n := f.manifestRequests("library/app", "v1") + f.manifestRequests("library/app", img.Digest); n != 1 {
		t.Errorf("the upstream saw %d manifest requests, want 1 (the first pull's)", n)
	}
	if rec, ok, err := f.index.Tag(DefaultHost, "library/app", "v1"); err != nil || !ok || rec.Digest.String() != img.Digest {
		t.Fatalf("tag after the write: %+v %v %v", rec, ok, err)
	}
	if at, _ := f.index.ManifestAccess(digest.Digest(img.Digest)); at.IsZero() {
		t.Error("the pulls answered during the write were not noted once it was recorded")
	}
	if f.p.writes.get(manifestKey(target{up: f.p.upstreams[DefaultHost], repo: "library/app"}, oci.Ref{Tag: "v1"})) != nil {
		t.Error("the write is still listed after it ended")
	}
	// From the index now.
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "hit")
}

// docker's order on a multi-arch image: the index by tag, then its
// platform's manifest by digest. The index's background fill needs that
// platform manifest while its write is held: it waits for the record
// instead of fetching it again, and so does a prefetch of the tag while
// the index's own write is held.
func TestFillAndPrefetchWaitForAManifestBeingWritten(t *testing.T) {
	f := newWritesFixture(t)
	ma := f.up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	child := ma.Platforms["linux/amd64"]
	gIndex, gChild := f.store.gate(ma.Digest), f.store.gate(child.Digest)
	tg := target{up: f.p.upstreams[DefaultHost], repo: "library/multi"}

	f.request(t, http.MethodGet, "/v2/library/multi/manifests/v1", ma.Index, ma.MediaType, "miss")
	recv(t, gIndex.reached, "the index's write")
	f.request(t, http.MethodGet, "/v2/library/multi/manifests/"+child.Digest, child.Manifest, child.MediaType, "miss")
	recv(t, gChild.reached, "the platform manifest's write")

	// A prefetch of the tag while the index is being written.
	copied := make(chan error, 1)
	go func() {
		_, err := f.p.Copy(t.Context(), "library/multi:v1", nil, nil)
		copied <- err
	}()
	recv(t, f.p.writes.get(manifestKey(tg, oci.Ref{Tag: "v1"})).waited, "the prefetch to wait for the index's record")
	gIndex.release <- nil
	// The index recorded, its fill starts and needs the platform
	// manifest still being written.
	recv(t, f.p.writes.get(manifestKey(tg, oci.Ref{Digest: digest.Digest(child.Digest)})).waited, "the fill to wait for the platform manifest's record")
	gChild.release <- nil
	select {
	case err := <-copied:
		if err != nil {
			t.Fatalf("prefetch: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("prefetch still running") // fail, not hang, on a regression
	}
	f.waitIdle(t)

	if n := f.manifestRequests("library/multi", "v1") + f.manifestRequests("library/multi", ma.Digest); n != 1 {
		t.Errorf("the upstream saw %d requests for the index, want 1", n)
	}
	if n := f.manifestRequests("library/multi", child.Digest); n != 1 {
		t.Errorf("the upstream saw %d requests for the platform manifest, want 1", n)
	}
	if rec, ok, err := f.index.Fill(DefaultHost, "library/multi", digest.Digest(ma.Digest)); err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("the index's fill: %+v %v %v; want complete", rec, ok, err)
	}
	for _, d := range []string{ma.Digest, child.Digest} {
		if _, ok, err := f.index.Manifest(digest.Digest(d)); err != nil || !ok {
			t.Errorf("manifest %s not recorded: %v", d, err)
		}
	}
}

// A copy (or fill) of a manifest being written, by digest or by tag,
// waits for its record, and does not fetch it again however late it
// looks: the write, once recorded, leaves p.writes, so a copy that looked
// in the index first and in p.writes after, the write ending in between,
// found it in neither.
func TestCopyOfAManifestWhoseWriteEndsMeanwhileFetchesItOnce(t *testing.T) {
	for _, byTag := range []bool{false, true} {
		t.Run(fmt.Sprintf("byTag=%v", byTag), func(t *testing.T) {
			f := newWritesFixture(t)
			img := f.up.SeedImage(t, "library/app", "v1", 1, 4<<10)
			ref, path := oci.Ref{Digest: digest.Digest(img.Digest)}, "library/app@"+img.Digest
			if byTag {
				ref, path = oci.Ref{Tag: "v1"}, "library/app:v1"
			}
			g := f.store.gate(img.Digest)
			reached := make(chan struct{})
			var once sync.Once
			var w *manifestWrite
			f.p.fetchingManifest = func(r oci.Ref) {
				if r != ref {
					return
				}
				once.Do(func() { close(reached) })
				<-w.done // the write ends here, before the copy fetches
			}

			f.request(t, http.MethodGet, "/v2/library/app/manifests/"+ref.String(), img.Manifest, img.MediaType, "miss")
			recv(t, g.reached, "the write")
			w = f.p.writes.get(manifestKey(target{up: f.p.upstreams[DefaultHost], repo: "library/app"}, ref))
			copied := make(chan error, 1)
			go func() {
				_, err := f.p.Copy(t.Context(), path, nil, nil)
				copied <- err
			}()
			select {
			case <-w.waited: // waits for the record
			case <-reached: // about to fetch it
			case <-time.After(time.Minute):
				t.Fatal("the copy neither waits for the write nor fetches")
			}
			g.release <- nil
			select {
			case err := <-copied:
				if err != nil {
					t.Fatalf("copy: %v", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("copy still running")
			}
			f.waitIdle(t)
			n := f.manifestRequests("library/app", img.Digest)
			if byTag {
				n += f.manifestRequests("library/app", "v1")
			}
			if n != 1 {
				t.Errorf("the upstream saw %d requests for the manifest, want 1", n)
			}
		})
	}
}

// A write that fails after the answer is logged and counted, leaves
// nothing recorded (no manifest, no tag, no fill, no pull), and the next
// request fetches the manifest again and records it.
func TestManifestWriteFailureAfterTheAnswer(t *testing.T) {
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	g := f.store.gate(img.Digest)

	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	recv(t, g.reached, "the write")
	f.request(t, http.MethodGet, "/v2/library/app/manifests/"+img.Digest, img.Manifest, img.MediaType, "hit")
	g.release <- errors.New("disk on fire")
	f.waitIdle(t)

	dgst := digest.Digest(img.Digest)
	if _, ok, err := f.index.Tag(DefaultHost, "library/app", "v1"); err != nil || ok {
		t.Errorf("tag recorded after its manifest's write failed: %v %v", ok, err)
	}
	if _, ok, err := f.index.Manifest(dgst); err != nil || ok {
		t.Errorf("manifest recorded after its write failed: %v %v", ok, err)
	}
	if _, ok, err := f.index.Fill(DefaultHost, "library/app", dgst); err != nil || ok {
		t.Errorf("fill recorded after the manifest's write failed: %v %v", ok, err)
	}
	if at, _ := f.index.ManifestAccess(dgst); !at.IsZero() {
		t.Errorf("the pulls of a manifest never recorded were noted: %v", at)
	}
	if !strings.Contains(f.logs.String(), "manifest answered but not stored") || !strings.Contains(f.logs.String(), "disk on fire") {
		t.Errorf("the failure was not logged:\n%s", f.logs.String())
	}
	if got := f.p.failures.recent(); len(got) != 1 || got[0].Kind != "manifest" || got[0].What != img.Digest {
		t.Errorf("failures on the status page: %+v", got)
	}
	if n := scrapeMetric(t, f.url, `docker_mirror_fill_duration_seconds_count{kind="manifest",result="error"}`); n != 1 {
		t.Errorf("manifest fills counted as failed: %v, want 1", n)
	}

	// The next request fetches it again, and this time it is recorded.
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	f.waitIdle(t)
	if n := f.manifestRequests("library/app", "v1"); n != 2 {
		t.Errorf("the upstream saw %d manifest GETs, want 2 (the retry after the failure)", n)
	}
	if rec, ok, err := f.index.Tag(DefaultHost, "library/app", "v1"); err != nil || !ok || rec.Digest != dgst {
		t.Fatalf("tag after the retry: %+v %v %v", rec, ok, err)
	}
	if at, _ := f.index.ManifestAccess(dgst); at.IsZero() {
		t.Error("the retry's pull was not noted")
	}
}

// scrapeMetric reads one sample from the proxy's /metrics (0 if absent).
func scrapeMetric(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric %s: %q", name, v)
			}
			return f
		}
	}
	return 0
}

// A tag pulled just now is listed from the mirror while the upstream is
// down, even before its record is written.
func TestTagsListedWhileTheirManifestIsWritten(t *testing.T) {
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 1, 1<<10)
	g := f.store.gate(img.Digest)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	recv(t, g.reached, "the write")
	f.up.Stop()

	resp, err := http.Get(f.url + "/v2/library/app/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != `{"name":"library/app","tags":["v1"]}`+"\n" || resp.Header.Get(cacheHeader) != "stale" {
		t.Fatalf("tags while v1 is written, upstream down: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	g.release <- nil
	f.waitIdle(t)
}

// A copy by digest of a manifest held already, while a pull by a tag that
// names it writes it again and that write fails (a store error), copies
// the manifest held: the failed write says only that this copy of it was
// not recorded, not that the mirror lacks it.
func TestCopyOfAHeldManifestWhoseNewWriteFailsUsesTheHeldOne(t *testing.T) {
	f := newWritesFixture(t)
	img := f.up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	if _, err := f.p.Copy(t.Context(), "library/app@"+img.Digest, nil, nil); err != nil {
		t.Fatalf("first copy: %v", err)
	}
	f.waitIdle(t)
	g := f.store.gate(img.Digest)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
	recv(t, g.reached, "the write")
	w := f.p.writes.get(manifestKey(target{up: f.p.upstreams[DefaultHost], repo: "library/app"}, oci.Ref{Digest: digest.Digest(img.Digest)}))
	if w == nil {
		t.Fatal("the tag's write is not under its digest")
	}
	copied := make(chan error, 1)
	go func() {
		_, err := f.p.Copy(t.Context(), "library/app@"+img.Digest, nil, nil)
		copied <- err
	}()
	recv(t, w.waited, "the copy waiting for the write")
	g.release <- errors.New("disk failed")
	select {
	case err := <-copied:
		if err != nil {
			t.Errorf("copy of a held manifest: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("copy still running")
	}
	f.waitIdle(t)
	if n := f.manifestRequests("library/app", img.Digest); n != 1 {
		t.Errorf("the upstream saw %d requests for the manifest by digest, want 1", n)
	}
}

// A copy (or fill) that, once its turn among the fill's parallel fetches
// came, finds its manifest being written (a client's pull fetched it
// meanwhile) waits for the record without holding the turn: the other
// images' fetches go on while a slow store write ends.
func TestCopyWaitingForAWriteHoldsNoFetchTurn(t *testing.T) {
	f := newWritesFixture(t)
	f.p.fetches = semaphore.NewWeighted(1) // WithConcurrency(1)
	a := f.up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	c := f.up.SeedImage(t, "library/other", "v1", 1, 4<<10)
	if err := f.p.fetches.Acquire(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	copied := make(chan error, 1)
	go func() {
		_, err := f.p.Copy(t.Context(), "library/app@"+a.Digest, nil, nil)
		copied <- err
	}()
	waitGoroutineIn(t, "proxy.(*Proxy).acquireFetch")
	// While it waits for its turn, a client's pull fetches it; its write
	// is held.
	g := f.store.gate(a.Digest)
	f.request(t, http.MethodGet, "/v2/library/app/manifests/"+a.Digest, a.Manifest, a.MediaType, "miss")
	recv(t, g.reached, "the write")
	w := f.p.writes.get(manifestKey(target{up: f.p.upstreams[DefaultHost], repo: "library/app"}, oci.Ref{Digest: digest.Digest(a.Digest)}))
	f.p.fetches.Release(1)
	recv(t, w.waited, "the copy waiting for the write")

	other := make(chan error, 1)
	go func() {
		_, err := f.p.Copy(t.Context(), "library/other@"+c.Digest, nil, nil)
		other <- err
	}()
	select {
	case err := <-other:
		if err != nil {
			t.Errorf("copy of another image: %v", err)
		}
	case <-time.After(time.Minute):
		t.Error("a copy of another image waits for the write the first copy waits for")
	}
	g.release <- nil
	if err := recvWithin(t, copied, "copy still running"); err != nil {
		t.Errorf("copy: %v", err)
	}
	f.waitIdle(t)
}

// waitGoroutineIn waits until a goroutine's stack has frame (a function's
// qualified name): one is blocked there.
func waitGoroutineIn(t *testing.T, frame string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // fail, not hang
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 1<<20)
	for {
		if bytes.Contains(buf[:runtime.Stack(buf, true)], []byte(frame+"(")) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no goroutine in %s", frame)
		case <-tick.C:
		}
	}
}
