package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// heldUpstream is an upstream of one image (library/x:v1) that holds every
// blob request, before its headers, until release is closed; arrived
// reports each blob request as it comes, and gets counts them by digest.
type heldUpstream struct {
	srv      *httptest.Server
	manifest []byte
	blobs    map[digest.Digest][]byte
	arrived  chan digest.Digest
	release  chan struct{}

	mu   sync.Mutex
	gets map[digest.Digest]int

	// via, if set, is the mirror's transport to it (newAheadProxy).
	via http.RoundTripper
}

func startHeldUpstream(t *testing.T) *heldUpstream {
	t.Helper()
	h := &heldUpstream{blobs: map[digest.Digest][]byte{}, arrived: make(chan digest.Digest, 16),
		release: make(chan struct{}), gets: map[digest.Digest]int{}}
	desc := func(mt, content string) v1.Descriptor {
		d := digest.FromString(content)
		h.blobs[d] = []byte(content)
		return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(content))}
	}
	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    desc(v1.MediaTypeImageConfig, `{"architecture":"amd64","os":"linux"}`),
		Layers:    []v1.Descriptor{desc(v1.MediaTypeImageLayer, "layer one"), desc(v1.MediaTypeImageLayer, "layer two")},
	}
	var err error
	if h.manifest, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/manifests/v1"):
			w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", digest.FromBytes(h.manifest).String())
			_, _ = w.Write(h.manifest)
		case strings.Contains(r.URL.Path, "/blobs/"):
			d := digest.Digest(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])
			h.mu.Lock()
			h.gets[d]++
			h.mu.Unlock()
			h.arrived <- d
			select {
			case <-h.release:
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write(h.blobs[d])
		}
		// Anything else (the ping) answers 200.
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(h.open)
	return h
}

func (h *heldUpstream) open() {
	select {
	case <-h.release:
	default:
		close(h.release)
	}
}

func (h *heldUpstream) getsOf(d digest.Digest) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gets[d]
}

// openAndSettle releases h's blobs, waits for p's work, and checks each
// blob was fetched once.
func (h *heldUpstream) openAndSettle(t *testing.T, ctx context.Context, p *Proxy) {
	t.Helper()
	h.open()
	if err := p.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	for d := range h.blobs {
		if n := h.getsOf(d); n != 1 {
			t.Errorf("blob %s fetched %d times, want 1", d, n)
		}
	}
}

// newAheadProxy is a mirror of h with fetching ahead on and opts.
func newAheadProxy(t *testing.T, h *heldUpstream, opts ...Option) (*Proxy, target) {
	t.Helper()
	mem, index := memStore(t)
	var upOpts []upstream.Option
	if h.via != nil {
		upOpts = append(upOpts, upstream.WithTransport(h.via))
	}
	up, err := upstream.New(DefaultHost, h.srv.URL, upOpts...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(mem, index, []*upstream.Client{up}, append([]Option{WithSpoolDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, target{up: up, repo: "library/x", name: "x"}
}

// recvWithin fails the test if ch yields nothing within a minute (a
// regression hangs, it does not pass).
func recvWithin[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	watchdog := time.NewTimer(time.Minute)
	defer watchdog.Stop()
	select {
	case v := <-ch:
		return v
	case <-watchdog.C:
		t.Fatal(what)
	}
	var zero T
	return zero
}

// Fetching ahead reports its blobs' requests as on their way as soon as
// each one is written, or queued for the upstream's budget: not once the
// downloads end. Here the upstream holds every blob before its headers,
// so the report comes while all of them are still pending (with a budget
// of 1, while two of them still wait for a connection); once released,
// each blob was fetched exactly once.
func TestFetchAheadReportsRequestsSent(t *testing.T) {
	for _, budget := range []int{DefaultUpstreamConnections, 1} {
		t.Run(map[int]string{DefaultUpstreamConnections: "budget 16", 1: "budget 1"}[budget], func(t *testing.T) {
			h := startHeldUpstream(t)
			p, tg := newAheadProxy(t, h, WithUpstreamConnections(budget))
			m := &storedManifest{body: h.manifest, mediaType: v1.MediaTypeImageManifest, digest: digest.FromBytes(h.manifest)}
			requested := p.startFetchAhead(t.Context(), tg, m)
			if requested == nil {
				t.Fatal("fetching ahead started nothing")
			}
			recvWithin(t, requested, "fetching ahead never reported its requests sent while the upstream held them")
			// The requests written reach the upstream, which holds them.
			want := min(budget, len(h.blobs))
			for range want {
				recvWithin(t, h.arrived, "a blob request written never reached the upstream")
			}
			h.open()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if err := p.WaitIdle(ctx); err != nil {
				t.Fatal(err)
			}
			for d := range h.blobs {
				if n := h.getsOf(d); n != 1 {
					t.Errorf("blob %s fetched %d times, want 1", d, n)
				}
				if _, ok, err := p.index.Blob(d); err != nil || !ok {
					t.Errorf("blob %s not recorded: %v", d, err)
				}
			}
		})
	}
}

// Fetching ahead reports at once what needs no request of its own: blobs
// recorded already, and a manifest whose blobs all are returns a closed
// channel.
func TestFetchAheadReportsRecordedBlobsAtOnce(t *testing.T) {
	h := startHeldUpstream(t)
	p, tg := newAheadProxy(t, h)
	for _, b := range h.blobs {
		storeHit(t, p, tg, p.store, b)
	}
	m := &storedManifest{body: h.manifest, mediaType: v1.MediaTypeImageManifest, digest: digest.FromBytes(h.manifest)}
	recvWithin(t, p.startFetchAhead(t.Context(), tg, m), "fetching ahead of stored blobs never reported")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := p.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	for d := range h.blobs {
		if n := h.getsOf(d); n != 0 {
			t.Errorf("stored blob %s fetched %d times", d, n)
		}
	}
	if p.startFetchAhead(t.Context(), tg, &storedManifest{body: []byte(`{}`), mediaType: v1.MediaTypeImageIndex}) != nil {
		t.Error("an index started fetching ahead")
	}
}

// A manifest fetched with its blobs fetched ahead is stored and recorded
// once their requests are on their way, not once they end: here the
// upstream holds every blob, and the record still comes (its fill then
// joins the held downloads), and no blob is asked for twice.
func TestManifestRecordedWhileItsBlobsAreHeld(t *testing.T) {
	h := startHeldUpstream(t)
	p, tg := newAheadProxy(t, h)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	m, err := p.fetchManifest(ctx, tg, oci.Ref{Tag: "v1"}, true)
	if err != nil {
		t.Fatalf("the manifest's record waited for its held blobs: %v", err)
	}
	if linked, err := p.index.Linked(tg.host(), tg.repo, m.digest); err != nil || !linked {
		t.Fatalf("manifest not recorded: %v %v", linked, err)
	}
	for range h.blobs {
		recvWithin(t, h.arrived, "a blob fetched ahead never reached the upstream")
	}
	h.openAndSettle(t, ctx, p)
	if rec, ok, err := p.index.Fill(tg.host(), tg.repo, m.digest); err != nil || !ok || rec.State != storage.FillComplete {
		t.Errorf("fill record %+v %v %v; want complete", rec, ok, err)
	}
}

// gatedTransport holds every blob request before it is written until
// release is closed, reporting each one on arrived.
type gatedTransport struct {
	base    http.RoundTripper
	arrived chan struct{}
	release chan struct{}
}

func (g *gatedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/blobs/") {
		g.arrived <- struct{}{}
		select {
		case <-g.release:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return g.base.RoundTrip(r)
}

// A client's answer with a manifest comes once the requests of its blobs
// fetched ahead are written, not before: here they are held before they
// are written, and the answer waits for them.
func TestManifestAnsweredOnceItsBlobsAreRequested(t *testing.T) {
	h := startHeldUpstream(t)
	gate := &gatedTransport{base: upstream.DefaultTransport(), arrived: make(chan struct{}, 16), release: make(chan struct{})}
	h.via = gate
	p, tg := newAheadProxy(t, h)
	p.answerWait = time.Hour // the bound is not what this tests
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	answered := make(chan error, 1)
	go func() {
		_, err := p.fetchManifestAnswer(ctx, tg, oci.Ref{Tag: "v1"}, true, http.Header{})
		answered <- err
	}()
	for range h.blobs {
		recvWithin(t, gate.arrived, "a blob fetched ahead never reached the transport")
	}
	select {
	case err := <-answered:
		t.Fatalf("answered (error %v) before the blobs' requests were written", err)
	default:
	}
	close(gate.release)
	if err := recvWithin(t, answered, "never answered once the blobs' requests were written"); err != nil {
		t.Fatal(err)
	}
	h.openAndSettle(t, ctx, p)
}
