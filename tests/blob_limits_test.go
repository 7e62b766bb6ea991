package tests

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// rogueUpstream is a registry that answers every blob GET with a body
// of its own making: declared with a Content-Length or chunked, as long as
// the test says (or until the request ends), or a first chunk and then
// nothing until the request ends. It counts the bytes it got out and
// reports when a blob request ended, which a held one does only when the
// mirror gives it up.
type rogueUpstream struct {
	srv *httptest.Server
	// length is the Content-Length declared (-1: chunked); body is how
	// many bytes are sent at most; hold: after the first chunk, wait for
	// the request to end.
	length, body int64
	hold         bool

	sent    atomic.Int64
	started chan struct{} // closed once a blob GET has sent its first chunk
	ended   chan struct{} // closed once a blob GET has ended
	once    sync.Once
	endOnce sync.Once
}

func startRogueUpstream(t *testing.T, length, body int64, hold bool) *rogueUpstream {
	u := &rogueUpstream{length: length, body: body, hold: hold, started: make(chan struct{}), ended: make(chan struct{})}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *rogueUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !strings.Contains(r.URL.Path, "/blobs/") {
		w.WriteHeader(http.StatusOK) // the ping
		return
	}
	if u.length >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(u.length, 10))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodGet {
		return
	}
	defer u.endOnce.Do(func() { close(u.ended) })
	chunk := make([]byte, 32<<10)
	for u.sent.Load() < u.body {
		n, err := w.Write(chunk[:min(int64(len(chunk)), u.body-u.sent.Load())])
		u.sent.Add(int64(n))
		if err != nil {
			return
		}
		http.NewResponseController(w).Flush()
		u.once.Do(func() { close(u.started) })
		if u.hold {
			<-r.Context().Done()
			return
		}
	}
}

// upstreamBytes is what the mirror read from docker.io's bodies.
func upstreamBytes(t *testing.T, m *servertest.Server) int64 {
	return int64(scrape(t, m)[`docker_mirror_upstream_bytes_total{upstream="docker.io"}`])
}

// readBuffer is the most the mirror reads from an upstream body beyond
// what it spools (one read).
const readBuffer = 256 << 10

// A blob body that never ends, or that says it is larger than the
// mirror's max_blob_size, is cut at the limit (the second before a byte
// of it is read) and nothing of it is kept: the client gets no complete
// 200, the store and the index have nothing, the blob is not fetched
// again, and the mirror read no more than the limit and one buffer.
func TestOversizedBlobCutAtTheLimit(t *testing.T) {
	const limit = 4 << 20
	const endless = 64 << 20 // "endless": far beyond the limit, so that a mirror without one ends too
	dgst := digest.FromString("a blob that never ends").String()
	for _, tc := range []struct {
		name   string
		length int64
	}{
		{"chunked", -1},
		{"declared larger", endless},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startRogueUpstream(t, tc.length, endless, false)
			m := servertest.Start(t, up.srv.URL, proxy.WithMaxBlobSize(limit))
			r := get(t, m.URL()+"/v2/library/endless/blobs/"+dgst)
			if r.status == http.StatusOK && r.err == nil {
				t.Errorf("a blob over the limit was answered as a complete 200 (%d bytes)", len(r.body))
			}
			if tc.length >= 0 {
				wantError(t, r, http.StatusForbidden, "DENIED")
				if h := do(t, http.MethodHead, m.URL()+"/v2/library/endless/blobs/"+dgst, nil); h.status != http.StatusForbidden {
					t.Errorf("HEAD of a blob over the limit: status %d, want 403", h.status)
				}
			}
			m.WaitIdle()
			read := upstreamBytes(t, m)
			t.Logf("limit %d bytes: the upstream got %d bytes out, the mirror read %d and kept nothing", limit, up.sent.Load(), read)
			if read > limit+readBuffer {
				t.Errorf("the mirror read %d bytes of the blob, over the %d byte limit and a %d byte buffer", read, limit, readBuffer)
			}
			if tc.length >= 0 && read != 0 {
				t.Errorf("the mirror read %d bytes of a body declared larger than the limit; want 0", read)
			}
			if _, err := m.Store.Stat(t.Context(), "library/endless", digestOf(t, dgst)); err == nil {
				t.Error("the oversized blob was stored")
			}
			if _, ok, _ := m.Index.Blob(digestOf(t, dgst)); ok {
				t.Error("the oversized blob was recorded")
			}
		})
	}
}

// A blob download whose only client hangs up is cancelled: the upstream
// sees its request end, and nothing is kept.
func TestDownloadNobodyReadsIsCancelled(t *testing.T) {
	up := startRogueUpstream(t, 64<<20, 64<<20, true)
	m := servertest.Start(t, up.srv.URL)
	dgst := digest.FromString("a blob nobody waits for").String()
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	clientCtx, hangUp := context.WithCancel(ctx)
	c := openStream(t, clientCtx, "client", m.URL()+"/v2/library/gone/blobs/"+dgst)
	wait(t, ctx, up.started, "the upstream never started sending")
	c.readAtLeast(1)
	hangUp()
	wait(t, ctx, up.ended, "the download went on after its only client hung up")
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/gone", digestOf(t, dgst)); err == nil {
		t.Error("the abandoned blob was stored")
	}
}

// A download a background fill wants goes on when the client reading it
// hangs up: the layer is stored, and the upstream sent it once.
func TestDownloadAFillWantsOutlivesItsClient(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/kept", "1", 1, 256<<10)
	// Fetching ahead off: the layer's download is the fill's alone.
	// (Fetched ahead, the download is the mirror's own, which a client
	// hanging up does not cancel either: the test would pass whether or
	// not the fill kept it.)
	m := servertest.Start(t, up.URL(), proxy.WithFetchAhead(false))
	layer := img.Layers[0]
	gate := up.GateBlob(layer, 64<<10)
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()

	wantManifest(t, get(t, m.URL()+"/v2/kept/manifests/1"), img.Manifest, img.MediaType) // the fill starts
	wait(t, ctx, gate.Reached(), "the fill never fetched the layer")
	clientCtx, hangUp := context.WithCancel(ctx)
	c := openStream(t, clientCtx, "client", m.URL()+"/v2/kept/blobs/"+layer)
	c.readAtLeast(1)
	hangUp()
	gate.Open()
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/kept", digestOf(t, layer)); err != nil {
		t.Fatalf("the layer the fill wanted was not stored: %v", err)
	}
	if n := blobGets(up, layer); n != 1 {
		t.Errorf("%d upstream GETs of the layer, want 1", n)
	}
	wantBlob(t, m, "kept", layer)
}

// A layer larger than the size its manifest declares is refused by the
// fill: the download stops at the declared size (here, before a byte of
// the body, which the upstream says is larger), nothing is stored, and the
// fill does not fetch it again.
func TestLayerLargerThanItsDescriptorRefused(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/liar", "1", 1, 512<<10)
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]
	// The same image, whose manifest says the layer is smaller than it is.
	var doc map[string]any
	if err := json.Unmarshal(img.Manifest, &doc); err != nil {
		t.Fatal(err)
	}
	doc["layers"].([]any)[0].(map[string]any)["size"] = size / 8
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	up.PutManifest(t, "library/liar", "small", img.MediaType, raw)
	m := servertest.Start(t, up.URL())

	wantManifest(t, get(t, m.URL()+"/v2/liar/manifests/small"), raw, img.MediaType)
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/liar", digestOf(t, layer)); err == nil {
		t.Error("a layer larger than its descriptor's size was stored by the fill")
	}
	if n := blobGets(up, layer); n != 1 {
		t.Errorf("%d upstream GETs of the layer, want 1 (refused, not retried)", n)
	}
	if read := upstreamBytes(t, m); read >= size {
		t.Errorf("the mirror read %d bytes from the upstream, the whole %d byte layer", read, size)
	}
	if rec, ok, err := m.Index.Fill("docker.io", "library/liar", digestOf(t, sha(raw))); err != nil || !ok || rec.State == storage.FillComplete {
		t.Errorf("fill record %+v, %v, %v: want one, not complete", rec, ok, err)
	}
	// The blob itself, asked for by digest, is what its digest says.
	wantBlob(t, m, "liar", layer)
}
