package tests

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A blob download cut mid-stream resumes from where it stopped, so the
// client's pull completes; the upstream is asked with Range for the rest.
func TestBlobCutMidStreamResumes(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cut", "1", 1, 512<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 2})
	wantBlob(t, m, "cut", layer)
	m.WaitIdle()
	if n := blobGets(up, layer); n != 3 {
		t.Errorf("%d upstream GETs of the blob, want 3 (one cut twice, resumed twice)", n)
	}
	if n := up.BlobBytesFor(layer); n > int64(len(img.Manifest))+600<<10 {
		t.Errorf("upstream sent %d bytes: the resumes did not start where the cuts were", n)
	}
	up.Stop()
	wantBlob(t, m, "cut", layer)
}

// A link that cuts every connection after a while (a proxy's or a load
// balancer's limit per connection) still delivers a blob larger than what
// passes in a few connections: each resume that brought bytes counts
// afresh, and the download goes on until the blob is whole, each byte sent
// once.
func TestBlobCutRepeatedlyWithProgressResumes(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cutoften", "1", 1, 1<<20)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]
	if size <= 600<<10 {
		t.Fatalf("the layer is %d bytes: the test needs more than six cuts of 100 KiB", size)
	}

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 6})
	wantBlob(t, m, "cutoften", layer)
	m.WaitIdle()
	if n := blobGets(up, layer); n != 7 {
		t.Errorf("%d upstream GETs of the blob, want 7 (one cut six times, resumed six times)", n)
	}
	if n := up.BlobBytesFor(layer); n != size {
		t.Errorf("upstream sent %d bytes of a blob of %d: the resumes did not start where the cuts were", n, size)
	}
	up.Stop()
	wantBlob(t, m, "cutoften", layer)
}

// A resume that fails itself (a load balancer's 502 while the server that
// cut the connection is replaced) is a resume that brought nothing: asked
// again, within the same budget, not the end of the download.
func TestBlobResumeFailingOnceAskedAgain(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/lb", "1", 1, 512<<10)
	var failed atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" && failed.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		up.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 1})
	wantBlob(t, m, "lb", layer)
	m.WaitIdle()
	if n := failed.Load(); n != 2 {
		t.Errorf("%d resumes asked, want 2 (one refused, one answered)", n)
	}
	if n := up.BlobBytesFor(layer); n != size {
		t.Errorf("upstream sent %d bytes of a blob of %d: the resume did not start where the cut was", n, size)
	}
	up.Stop()
	wantBlob(t, m, "lb", layer)
}

// cutResumes is an upstream front that answers every resume (a request
// with a Range) with its headers alone, then closes the connection: a
// resume that brings nothing.
func cutResumes(up http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			w = cutAtBody{w}
		}
		up.ServeHTTP(w, r)
	})
}

// cutAtBody is a ResponseWriter that sends the headers and closes the
// connection at the first byte of the body.
type cutAtBody struct{ http.ResponseWriter }

func (w cutAtBody) Write([]byte) (int, error) {
	rc := http.NewResponseController(w.ResponseWriter)
	_ = rc.Flush()
	if conn, _, err := rc.Hijack(); err == nil {
		conn.Close()
	}
	return 0, http.ErrHijacked
}

func (w cutAtBody) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// When the retry budget runs out (resumes that bring nothing), the
// client's connection is closed before the declared length, and nothing
// partial is stored.
func TestBlobCutBeyondRetriesAbortsClient(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cut", "1", 1, 512<<10)
	front := httptest.NewServer(cutResumes(up))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10})
	r := get(t, m.URL()+"/v2/cut/blobs/"+layer)
	if r.err == nil && r.status == http.StatusOK {
		t.Fatalf("a cut blob was answered as a complete 200 (%d bytes)", len(r.body))
	}
	m.WaitIdle()
	if n := blobGets(up, layer); n != 4 {
		t.Errorf("%d upstream GETs of the blob, want 4 (the cut one, three resumes that brought nothing)", n)
	}
	if _, err := m.Store.Stat(t.Context(), "library/cut", digestOf(t, layer)); err == nil {
		t.Fatal("a partial blob was stored")
	}
	up.ClearFault()
	wantBlob(t, m, "cut", layer)
}

// noLength is a ResponseWriter that sends no Content-Length: the body goes
// out chunked, as from an upstream that does not say how long a blob is.
type noLength struct {
	http.ResponseWriter
	wrote bool
}

func (w *noLength) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.Header().Del("Content-Length")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *noLength) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *noLength) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// A blob the upstream sends without a length is passed on chunked; when
// its download is cut beyond the resumes, the client's connection is
// aborted: a chunked body that simply ended would look whole.
func TestChunkedBlobCutBeyondRetriesAbortsClient(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cut", "1", 1, 512<<10)
	front := httptest.NewServer(cutResumes(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up.ServeHTTP(&noLength{ResponseWriter: w}, r)
	})))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10})
	r := get(t, m.URL()+"/v2/cut/blobs/"+layer)
	// The answer must have started (the bytes before the cut were passed
	// on) without a length, else this test does not test the abort.
	if r.status != http.StatusOK || r.header.Get("Content-Length") != "" {
		t.Fatalf("status %d, Content-Length %q: the test needs a 200 passed on without a length before the cut", r.status, r.header.Get("Content-Length"))
	}
	if r.err == nil {
		t.Fatalf("a cut blob sent without a length was answered as a complete 200 (%d bytes of %s)", len(r.body), layer)
	}
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/cut", digestOf(t, layer)); err == nil {
		t.Fatal("a partial blob was stored")
	}
	up.ClearFault()
	wantBlob(t, m, "cut", layer)
}

// While an upstream rate-limits, cached content keeps being served.
func TestRateLimitedUpstreamServesCache(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/rl", "1", 1, 8<<10)
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(time.Minute))
	cranePull(t, ref(t, m, "rl:1"))
	m.WaitIdle()
	up.ResetCounts() // the fill's own requests (its signatures' tags) do not count
	up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"120"}}})
	m.Clock.Advance(time.Hour)
	for range 2 {
		r := get(t, m.URL()+"/v2/rl/manifests/1")
		wantManifest(t, r, img.Manifest, img.MediaType)
		if r.header.Get("X-Cache") != "stale" {
			t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
		}
		wantImage(t, m, "rl", img)
	}
	// One revalidation met the 429; the second was not sent.
	if n := up.Count(http.MethodHead, fixture.KindManifest); n != 1 {
		t.Errorf("%d HEADs reached a rate-limiting upstream, want 1", n)
	}
	r := get(t, m.URL()+"/v2/rl/manifests/other")
	wantError(t, r, 429, "TOOMANYREQUESTS")
	if !strings.Contains(string(r.body), "rate-limit") {
		t.Errorf("429 body does not say why: %s", r.body)
	}
}

// An upstream that hangs does not hang the clients: past the upstream
// timeout, what is cached is served and the rest answers 504.
func TestHangingUpstream(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/hang", "1", 1, 4<<10)
	other := up.SeedImage(t, "library/hang", "2", 1, 4<<10)
	m := servertest.StartUpstreams(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL(), Timeout: 300 * time.Millisecond}}, nil, proxy.WithTagTTL(time.Minute))
	cranePull(t, ref(t, m, "hang:1"))
	m.WaitIdle()

	up.SetFault(fixture.Fault{Latency: 10 * time.Minute})
	m.Clock.Advance(time.Hour)
	r := get(t, m.URL()+"/v2/hang/manifests/1")
	wantManifest(t, r, img.Manifest, img.MediaType)
	if r.header.Get("X-Cache") != "stale" {
		t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
	}
	wantImage(t, m, "hang", img)
	r = get(t, m.URL()+"/v2/hang/manifests/2")
	wantError(t, r, http.StatusGatewayTimeout, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "did not answer") {
		t.Errorf("504 body does not say why: %s", r.body)
	}
	wantError(t, get(t, m.URL()+"/v2/hang/blobs/"+other.Layers[0]), http.StatusGatewayTimeout, "UNAVAILABLE")
	up.Stop() // ends the hanging requests
}

// A manifest over 4 MiB is refused, not stored, and not served.
func TestOversizedManifestRefused(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":"` + strings.Repeat("a", 5<<20) + `"}}`)
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusOK, Body: big,
		Header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}})
	r := get(t, m.URL()+"/v2/huge/manifests/1")
	wantError(t, r, http.StatusBadGateway, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "limit") {
		t.Errorf("the error does not say why: %s", r.body)
	}
	if m.Index.StoredBytes() != 0 {
		t.Errorf("%d bytes stored", m.Index.StoredBytes())
	}
}

// A HEAD of a blob the mirror is downloading is answered from the
// download, whose size the upstream has said: not with the rate limit the
// upstream has imposed since, which the download does not need.
func TestHeadOfDownloadingBlobDuringBackoff(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/slow", "1", 1, 256<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	gate := up.GateBlob(layer, 16<<10)
	got := make(chan response, 1)
	go func() { got <- get(t, m.URL()+"/v2/slow/blobs/"+layer) }()
	<-gate.Reached()

	up.SetFault(fixture.Fault{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"120"}}})
	wantError(t, get(t, m.URL()+"/v2/slow/manifests/other"), http.StatusTooManyRequests, "TOOMANYREQUESTS")
	h := do(t, http.MethodHead, m.URL()+"/v2/slow/blobs/"+layer, nil)
	size := strconv.FormatInt(blobSizes(t, img)[layer], 10)
	if h.status != http.StatusOK || h.header.Get("Content-Length") != size || h.header.Get("Docker-Content-Digest") != layer {
		t.Errorf("HEAD of a blob downloading: %d %q %s", h.status, h.header.Get("Content-Length"), h.body)
	}
	gate.Open()
	up.ClearFault()
	if r := <-got; r.status != http.StatusOK || sha(r.body) != layer {
		t.Errorf("GET of the blob: %d, %d bytes", r.status, len(r.body))
	}
}

// A blob download cut while the upstream rate-limits (a 429 to another
// pull's manifest, as Docker Hub limits manifests, not blobs) is resumed
// all the same: the resume goes on with a request the upstream took
// before, and the client gets the whole blob, each byte sent once, not
// an aborted body for a limit the blob never met.
func TestBlobCutDuringBackoffResumes(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/slowcut", "1", 1, 512<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 1})
	gate := up.GateBlob(layer, 16<<10)
	got := make(chan response, 1)
	go func() { got <- get(t, m.URL()+"/v2/slowcut/blobs/"+layer) }()
	<-gate.Reached()

	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"120"}}, Times: 1})
	wantError(t, get(t, m.URL()+"/v2/slowcut/manifests/other"), http.StatusTooManyRequests, "TOOMANYREQUESTS")
	gate.Open()
	if r := <-got; r.err != nil || r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("GET of a blob cut during a back-off: %d, %d bytes, %v", r.status, len(r.body), r.err)
	}
	m.WaitIdle()
	if n := up.BlobBytesFor(layer); n != size {
		t.Errorf("upstream sent %d bytes of a blob of %d", n, size)
	}
}
