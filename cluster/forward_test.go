package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// owner is a fake replica that answers every request with handler, and
// counts them.
func owner(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if r.Header.Get(HopHeader) != "http://self.test:5000" {
			t.Errorf("request without the hop header: %v", r.Header)
		}
		handler(w, r)
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// ownedBy returns content whose digest peer owns in c.
func ownedBy(t *testing.T, c *Cluster, peer string) ([]byte, digest.Digest) {
	for i := range 1000 {
		b := []byte(fmt.Sprintf("blob %d", i))
		if d := digest.FromBytes(b); c.Owners(d.String())[0] == peer {
			return b, d
		}
	}
	t.Fatal("no digest owned by the peer")
	return nil, ""
}

func newTwo(t *testing.T, peer string) *Cluster {
	c, err := New("http://self.test:5000", []string{peer}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func peerUp(c *Cluster, u string) bool {
	for _, p := range c.Peers() {
		if p.URL == u {
			return p.Up
		}
	}
	return false
}

func blobRequest(d digest.Digest, header ...string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v2/library/x/blobs/"+d.String(), nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r
}

func TestServeBlobHoldsBackTheLastByteOfWrongBytes(t *testing.T) {
	var body []byte
	s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) {
		bad := append([]byte(nil), body...)
		bad[0] ^= 0xff
		w.Header().Set("Content-Length", strconv.Itoa(len(bad)))
		w.Write(bad)
	})
	c := newTwo(t, s.URL)
	body, d := ownedBy(t, c, s.URL)
	w := httptest.NewRecorder()
	served, err := c.ServeBlob(w, blobRequest(d), d)
	if !served || !errors.Is(err, upstream.ErrInvalid) {
		t.Fatalf("served %v, err %v: want served with an error (the connection is then broken)", served, err)
	}
	if w.Body.Len() != len(body)-1 {
		t.Fatalf("client got %d of %d bytes: the last byte of a blob that does not match must never be sent", w.Body.Len(), len(body))
	}
}

func TestServeBlobPassesRangesAndHeadersOn(t *testing.T) {
	s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "bytes=2-4" {
			t.Errorf("Range %q not passed on", r.Header.Get("Range"))
		}
		w.Header().Set("Content-Range", "bytes 2-4/9")
		w.Header().Set("Content-Length", "3")
		w.Header().Set("Docker-Content-Digest", "sha256:x")
		w.Header().Set("ETag", `"sha256:x"`)
		w.Header().Set("X-Internal", "no")
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte("cde"))
	})
	c := newTwo(t, s.URL)
	_, d := ownedBy(t, c, s.URL)
	w := httptest.NewRecorder()
	served, err := c.ServeBlob(w, blobRequest(d, "Range", "bytes=2-4"), d)
	if !served || err != nil {
		t.Fatalf("served %v, err %v", served, err)
	}
	h := w.Result().Header
	if w.Code != http.StatusPartialContent || w.Body.String() != "cde" || h.Get("Content-Range") != "bytes 2-4/9" ||
		h.Get("Docker-Content-Digest") != "sha256:x" || h.Get("ETag") != `"sha256:x"` || h.Get("X-Internal") != "" {
		t.Fatalf("answer %d %q %v", w.Code, w.Body.String(), h)
	}
}

func TestServeBlobWhenTheOwnerFails(t *testing.T) {
	for _, tt := range []struct {
		name       string
		status     int
		cache      string // the owner's X-Cache
		dead       bool
		wantServed bool
		wantDown   bool
	}{
		{name: "5xx: fetched here, owner stays up", status: http.StatusServiceUnavailable},
		{name: "401: fetched here", status: http.StatusUnauthorized},
		{name: "404: passed on", status: http.StatusNotFound, cache: "miss", wantServed: true},
		{name: "404 before any lookup (a name the owner does not serve): fetched here", status: http.StatusNotFound, cache: "none"},
		{name: "429: passed on", status: http.StatusTooManyRequests, wantServed: true},
		{name: "connection refused: fetched here, owner down", dead: true, wantDown: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.cache != "" {
					w.Header().Set("X-Cache", tt.cache)
				}
				w.WriteHeader(tt.status)
			})
			c := newTwo(t, s.URL)
			_, d := ownedBy(t, c, s.URL)
			if tt.dead {
				s.Close()
			}
			w := httptest.NewRecorder()
			served, err := c.ServeBlob(w, blobRequest(d), d)
			if served != tt.wantServed || err != nil {
				t.Fatalf("served %v, err %v; want served %v", served, err, tt.wantServed)
			}
			if served && w.Code != tt.status {
				t.Errorf("status %d, want %d", w.Code, tt.status)
			}
			if !served && w.Body.Len() != 0 {
				t.Errorf("wrote %q before fetching here", w.Body.String())
			}
			if peerUp(c, s.URL) == tt.wantDown {
				t.Errorf("owner up = %v", peerUp(c, s.URL))
			}
		})
	}
}

func TestForwardedRequestsAreServedHere(t *testing.T) {
	s, n := owner(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newTwo(t, s.URL)
	_, d := ownedBy(t, c, s.URL)
	served, err := c.ServeBlob(httptest.NewRecorder(), blobRequest(d, HopHeader, "http://other:5000"), d)
	if served || err != nil || n.Load() != 0 {
		t.Fatalf("a forwarded request was forwarded again: served %v, err %v, owner asked %d times", served, err, n.Load())
	}
}

func TestManifestThroughTheOwner(t *testing.T) {
	body := []byte(`{"schemaVersion":2}`)
	var answer atomic.Value // what the owner does
	s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("ns") != "ghcr.io" || r.URL.Path != "/v2/o/app/manifests/v1" {
			t.Errorf("asked %s", r.URL)
		}
		switch answer.Load() {
		case "ok":
			w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
			w.Write(body)
		case "lie":
			w.Header().Set("Docker-Content-Digest", digest.FromString("other").String())
			w.Write(body)
		case "404":
			w.Header().Set("X-Cache", "miss")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no v1 upstream"}]}`))
		case "not configured":
			w.Header().Set("X-Cache", "none")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"errors":[{"code":"NAME_UNKNOWN","message":"upstream \"ghcr.io\" is not configured on this mirror"}]}`))
		}
	})
	c := newTwo(t, s.URL)
	var tag string
	for i := range 1000 {
		if k := fmt.Sprintf("ghcr.io/o/app:%d", i); c.Owners(k)[0] == s.URL {
			tag = k
			break
		}
	}
	ctx := context.Background()
	answer.Store("ok")
	m, ok, err := c.Manifest(ctx, tag, "ghcr.io", "o/app", oci.Ref{Tag: "v1"})
	if !ok || err != nil || string(m.Body) != string(body) || m.Digest != digest.FromBytes(body) || m.MediaType != oci.MediaTypeOCIManifest {
		t.Fatalf("ok: %v %v %+v", ok, err, m)
	}
	answer.Store("lie")
	if _, ok, err := c.Manifest(ctx, tag, "ghcr.io", "o/app", oci.Ref{Tag: "v1"}); ok || err != nil {
		t.Fatalf("a manifest whose digest does not match: ok %v, err %v; want it fetched here", ok, err)
	}
	answer.Store("404")
	_, ok, err = c.Manifest(ctx, tag, "ghcr.io", "o/app", oci.Ref{Tag: "v1"})
	var e *errcode.Error
	if !ok || !errors.As(err, &e) || e.Code != errcode.ManifestUnknown || !errors.Is(err, upstream.ErrNotFound) {
		t.Fatalf("404: ok %v, err %v; want MANIFEST_UNKNOWN wrapping upstream.ErrNotFound", ok, err)
	}
	// An owner whose configuration lacks the upstream (a rolling change
	// of it) refuses the name before any lookup: not the upstream's 404.
	answer.Store("not configured")
	if _, ok, err := c.Manifest(ctx, tag, "ghcr.io", "o/app", oci.Ref{Tag: "v1"}); ok || err != nil {
		t.Fatalf("an owner without the upstream: ok %v, err %v; want it fetched here", ok, err)
	}
}

// TestManifestOwnerSilentUntilTheDeadline: an owner that does not answer
// before the fetch's deadline (a wedged replica, a connection to a dead
// node) is a gateway timeout, as an upstream that does not answer is;
// never a bare context error, which clients see as 500 UNKNOWN.
func TestManifestOwnerSilentUntilTheDeadline(t *testing.T) {
	s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	c := newTwo(t, s.URL)
	_, d := ownedBy(t, c, s.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, ok, err := c.Manifest(ctx, d.String(), "docker.io", "library/x", oci.Ref{Digest: d})
	var e *errcode.Error
	if !ok || !errors.As(err, &e) || e.Status() != http.StatusGatewayTimeout || !errors.Is(err, upstream.ErrUnavailable) {
		t.Fatalf("ok %v, err %v; want a 504 wrapping upstream.ErrUnavailable", ok, err)
	}
}

// TestServeBlobResumedRangeStopsAtItsEnd: a client's Range the owner
// answered 206 breaks mid-body, and the replica that resumes it answers
// 200 with the whole blob (a download of unknown size ignores a Range).
// The client gets the bytes of its range and not one past them: net/http
// refuses a write past the Content-Length, so bytes past the range cut
// the answer short.
func TestServeBlobResumedRangeStopsAtItsEnd(t *testing.T) {
	var body []byte
	self := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body) // 200, whole, no length: a Range ignored
	}))
	t.Cleanup(self.Close)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 2-4/%d", len(body)))
		w.Header().Set("Content-Length", "3")
		w.WriteHeader(http.StatusPartialContent)
		w.Write(body[2:3])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // cut mid-body
	}))
	t.Cleanup(s.Close)
	c, err := New(self.URL, []string{s.URL}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	body, d := ownedBy(t, c, s.URL) // 6 bytes or more: the range ends before the blob
	w := httptest.NewRecorder()
	served, err := c.ServeBlob(w, blobRequest(d, "Range", "bytes=2-4"), d)
	if !served || err != nil || w.Code != http.StatusPartialContent || w.Body.String() != string(body[2:5]) {
		t.Fatalf("served %v, err %v, answer %d %q; want 206 %q (bytes 2-4)", served, err, w.Code, w.Body.String(), body[2:5])
	}
}

// TestServeBlobResumeClientGoneLeavesPeersUp: a client that hangs up
// while its blob is being resumed through the next replica says nothing
// of that replica: it stays up and keeps its share of misses.
func TestServeBlobResumeClientGoneLeavesPeersUp(t *testing.T) {
	var body []byte
	reached := make(chan struct{})
	next := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(reached)
		<-r.Context().Done() // answers nothing before the client is gone
	}))
	t.Cleanup(next.Close)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:1])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // cut mid-body
	}))
	t.Cleanup(s.Close)
	c, err := New("http://self.test:5000", []string{s.URL, next.URL}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	var d digest.Digest
	for i := 0; d == ""; i++ {
		if i == 1000 {
			t.Fatal("no digest owned by the peer with the other next in line")
		}
		b := []byte(fmt.Sprintf("blob %d", i))
		if o := c.Owners(digest.FromBytes(b).String()); o[0] == s.URL && o[1] == next.URL {
			body, d = b, digest.FromBytes(b)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-reached
		cancel()
	}()
	served, err := c.ServeBlob(httptest.NewRecorder(), blobRequest(d).WithContext(ctx), d)
	if !served || err == nil {
		t.Fatalf("served %v, err %v; want served with an error", served, err)
	}
	if !peerUp(c, next.URL) {
		t.Fatalf("%s marked down because a client hung up while it was asked to resume: %+v", next.URL, c.Peers())
	}
}

// A blob's owner that takes the request and answers nothing (hung) holds
// the client only until it is marked down (here by a probe that fails):
// then the client's blob is fetched here instead.
func TestServeBlobOwnerHungUntilMarkedDown(t *testing.T) {
	reached := make(chan struct{}, 1)
	s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) {
		reached <- struct{}{}
		<-r.Context().Done() // answers nothing
	})
	c := newTwo(t, s.URL)
	_, d := ownedBy(t, c, s.URL)
	type result struct {
		served bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		served, err := c.ServeBlob(httptest.NewRecorder(), blobRequest(d), d)
		done <- result{served, err}
	}()
	<-reached
	failed, cancel := context.WithCancel(context.Background())
	cancel()
	c.Probe(failed) // the owner's probe fails: it is marked down
	if got := <-done; got.served || got.err != nil {
		t.Fatalf("served %v, err %v; want the blob left to this replica to fetch", got.served, got.err)
	}
}

// A repository is named to a peer so that the peer resolves it to the same
// one: also one whose first component is its upstream's host, which with
// ns alone would be read as a path prefix.
func TestPeerURLNamesTheRepository(t *testing.T) {
	for _, c := range []struct{ host, repo, want string }{
		{"docker.io", "library/nginx", "http://p/v2/library/nginx/manifests/1?ns=docker.io"},
		{"ghcr.io", "owner/app", "http://p/v2/owner/app/manifests/1?ns=ghcr.io"},
		{"ghcr.io", "ghcr.io/app", "http://p/v2/ghcr.io/ghcr.io/app/manifests/1?ns=ghcr.io"},
		{"ghcr.io", "quay.io/app", "http://p/v2/quay.io/app/manifests/1?ns=ghcr.io"},
	} {
		if got := peerURL("http://p", c.host, c.repo, "manifests", "1"); got != c.want {
			t.Errorf("peerURL(%s, %s) = %s, want %s", c.host, c.repo, got, c.want)
		}
	}
}

// A manifest asked by a digest this build cannot compute (an upstream's
// index naming a child by blake3, or by no digest at all) is an error,
// not a panic of the whole mirror when the owner's answer is hashed.
func TestManifestByUnusableDigest(t *testing.T) {
	s, _ := owner(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
		w.Write([]byte(`{"schemaVersion":2}`))
	})
	c := newTwo(t, s.URL)
	for _, d := range []digest.Digest{"blake3:" + digest.Digest(strings.Repeat("a", 64)), "nocolon"} {
		ref := oci.Ref{Digest: d}
		for k := 0; k < 1000; k++ { // a key the peer owns
			key := fmt.Sprintf("%s#%d", d, k)
			if c.Owners(key)[0] != s.URL {
				continue
			}
			if _, _, err := c.Manifest(context.Background(), key, "ghcr.io", "o/app", ref); err == nil {
				t.Errorf("manifest by %q: no error", d)
			}
			break
		}
	}
}

// TestServeBlobCutByAHealthyOwnerLeavesItUp: an owner whose own download
// of one blob failed (its upstream cut it beyond resuming) cuts its
// answer as a dead one would, but answers its /readyz: it stays up, and
// another blob it is sending meanwhile goes on from it, not cut and
// fetched again through the next replica.
func TestServeBlobCutByAHealthyOwnerLeavesItUp(t *testing.T) {
	blobs := map[digest.Digest][]byte{}
	var fromSelf atomic.Int32
	self := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fromSelf.Add(1)
		b := blobs[digest.Digest(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])]
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(b)))
	}))
	t.Cleanup(self.Close)
	var held, cut digest.Digest
	reached, release := make(chan struct{}), make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := digest.Digest(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])
		if r.URL.Path == "/readyz" {
			return // 200: healthy
		}
		b := blobs[d]
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b[:1])
		w.(http.Flusher).Flush()
		if d == cut {
			panic(http.ErrAbortHandler) // its upstream failed it
		}
		close(reached)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(b[1:])
	}))
	t.Cleanup(s.Close)
	c, err := New(self.URL, []string{s.URL}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; cut == ""; i++ {
		b := []byte(fmt.Sprintf("blob %d", i))
		if d := digest.FromBytes(b); c.Owners(d.String())[0] == s.URL {
			blobs[d] = b
			if held == "" {
				held = d
			} else {
				cut = d
			}
		}
	}
	done := make(chan error, 1)
	w := httptest.NewRecorder()
	go func() {
		_, err := c.ServeBlob(w, blobRequest(held), held)
		done <- err
	}()
	<-reached
	wc := httptest.NewRecorder()
	if served, err := c.ServeBlob(wc, blobRequest(cut), cut); !served || err != nil || wc.Body.String() != string(blobs[cut]) {
		t.Fatalf("cut blob: served %v, err %v, body %q", served, err, wc.Body.String())
	}
	close(release)
	if err := <-done; err != nil || w.Body.String() != string(blobs[held]) {
		t.Fatalf("held blob: err %v, body %q", err, w.Body.String())
	}
	if !peerUp(c, s.URL) {
		t.Errorf("a healthy owner that cut one answer was marked down: %+v", c.Peers())
	}
	if n := fromSelf.Load(); n != 1 {
		t.Errorf("the next replica was asked %d times, want 1 (the cut blob's rest only)", n)
	}
}

// TestFillBlobCutByAHealthyOwnerLeavesItUp: the background mirror's blob
// the owner fails to deliver mid-body (its own download failed) is
// fetched here, and the owner, answering its /readyz, stays up: its
// share of misses is not fetched again elsewhere.
func TestFillBlobCutByAHealthyOwnerLeavesItUp(t *testing.T) {
	var body []byte
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			return // 200: healthy
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:1])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // its upstream failed it
	}))
	t.Cleanup(s.Close)
	c := newTwo(t, s.URL)
	body, d := ownedBy(t, c, s.URL)
	f, err := os.CreateTemp(t.TempDir(), "spool")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fetched, err := c.FillBlob(context.Background(), "docker.io", "library/x", d, int64(len(body)), f)
	if fetched || err != nil {
		t.Fatalf("fetched %v, err %v; want the blob left to this replica", fetched, err)
	}
	if !peerUp(c, s.URL) {
		t.Errorf("a healthy owner that cut one answer was marked down: %+v", c.Peers())
	}
}

// headerSignal is a recorder that closes wrote once its headers are
// written: the owner's answer is in hand.
type headerSignal struct {
	*httptest.ResponseRecorder
	wrote chan struct{}
}

func (w headerSignal) WriteHeader(code int) {
	w.ResponseRecorder.WriteHeader(code)
	close(w.wrote)
}

// A blob's owner that stops sending mid-body (hung) is cut once it is
// marked down and its answer has brought nothing for the probe timeout:
// the answer of one that is marked down but still sending (shutting
// down) goes on, a stalled one does not hold the client for ever.
func TestServeBlobOwnerHungMidBodyCutOnceMarkedDown(t *testing.T) {
	var body []byte
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:1])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // sends nothing more
	}))
	t.Cleanup(s.Close)
	c, err := New("http://self.test:5000", []string{s.URL}, quiet(), WithProbeTimeout(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	body, d := ownedBy(t, c, s.URL)
	w := headerSignal{httptest.NewRecorder(), make(chan struct{})}
	type result struct {
		served bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		served, err := c.ServeBlob(w, blobRequest(d), d)
		done <- result{served, err}
	}()
	<-w.wrote
	failed, cancel := context.WithCancel(context.Background())
	cancel()
	c.Probe(failed) // the owner's probe fails: it is marked down
	if got := <-done; !got.served || got.err == nil {
		t.Fatalf("served %v, err %v: want the answer begun broken off (its rest nowhere to be had)", got.served, got.err)
	}
}

// roundTrip is an http.RoundTripper of a function: replicas answering in
// memory, so that a test runs in a synctest bubble.
type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestServeBlobOwnerBackUpNotCutWhenItsAnswerPauses: an answer in flight
// when its owner was marked down (a probe that failed once: a store
// briefly unreachable, a probe timed out under load) and that went on
// while the owner was up again, pausing longer than the probe timeout
// (the owner's own upstream stalled), goes on: it is not cut as one from
// a replica still down, and resumed through the next replica, which
// would fetch the blob from the upstream again.
func TestServeBlobOwnerBackUpNotCutWhenItsAnswerPauses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const peer = "http://owner.test:5000"
		pr, pw := io.Pipe()
		var body []byte
		rt := roundTrip(func(r *http.Request) (*http.Response, error) {
			resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}
			switch {
			case r.URL.Host != "owner.test:5000":
				resp.StatusCode = http.StatusInternalServerError // nowhere else to resume
			case r.URL.Path != "/readyz":
				go func() {
					<-r.Context().Done()
					pw.CloseWithError(context.Cause(r.Context()))
				}()
				resp.ContentLength, resp.Body = int64(len(body)), pr
			}
			return resp, nil
		})
		c, err := New("http://self.test:5000", []string{peer}, quiet(), WithTransport(rt), WithProbeTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		body, d := ownedBy(t, c, peer)
		w := httptest.NewRecorder()
		done := make(chan error, 1)
		go func() {
			_, err := c.ServeBlob(w, blobRequest(d), d)
			done <- err
		}()
		pw.Write(body[:1])
		c.markDown(peer, errors.New("probe timed out"))
		c.Probe(context.Background()) // up again
		if !peerUp(c, peer) {
			t.Fatal("owner not up again")
		}
		time.Sleep(time.Minute) // the owner's upstream stalls
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("an answer from an owner up again was cut while it paused: %v", err)
		default:
		}
		pw.Write(body[1:])
		pw.Close()
		if err := <-done; err != nil || w.Body.String() != string(body) {
			t.Fatalf("err %v, body %q", err, w.Body.String())
		}
	})
}

// TestServeBlobOwnerMarkedDownNotProbedAgainWhenCut: an answer cut
// because its owner was marked down (it hung: its probe got no answer)
// is resumed through the next replica at once: the owner is not probed
// again first, which would hold the client for another probe timeout.
func TestServeBlobOwnerMarkedDownNotProbedAgainWhenCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const peer = "http://owner.test:5000"
		pr, pw := io.Pipe()
		var body []byte
		var probes atomic.Int32
		rt := roundTrip(func(r *http.Request) (*http.Response, error) {
			switch {
			case r.URL.Host != "owner.test:5000":
				return &http.Response{StatusCode: http.StatusInternalServerError, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			case r.URL.Path == "/readyz":
				probes.Add(1)
				<-r.Context().Done() // hung
				return nil, context.Cause(r.Context())
			}
			go func() {
				<-r.Context().Done()
				pw.CloseWithError(context.Cause(r.Context()))
			}()
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, ContentLength: int64(len(body)), Body: pr, Request: r}, nil
		})
		c, err := New("http://self.test:5000", []string{peer}, quiet(), WithTransport(rt), WithProbeTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		body, d := ownedBy(t, c, peer)
		done := make(chan error, 1)
		go func() {
			_, err := c.ServeBlob(httptest.NewRecorder(), blobRequest(d), d)
			done <- err
		}()
		pw.Write(body[:1])
		c.Probe(context.Background()) // no answer: marked down
		if err := <-done; err == nil {
			t.Fatal("a hung owner's answer was not cut")
		}
		if n := probes.Load(); n != 1 {
			t.Errorf("the hung owner was probed %d times, want 1: its answer cut, it was probed again before resuming", n)
		}
	})
}

// slowClient is a recorder whose first Write waits for gate, as a write
// to a client reading slowly does; writing is closed as it starts.
type slowClient struct {
	*httptest.ResponseRecorder
	writing, gate chan struct{}
	once          *sync.Once
}

func (w slowClient) Write(p []byte) (int, error) {
	w.once.Do(func() {
		close(w.writing)
		<-w.gate
	})
	return w.ResponseRecorder.Write(p)
}

// TestServeBlobOwnerDownSlowClientNotCut: an answer from an owner marked
// down (stopping: its listener closed, it finishes its answers) whose
// client takes its bytes slowly, so that the answer is not read for the
// probe timeout while the owner has the rest ready, goes on: only a read
// waiting on the owner that long is a hang. Cut, it was resumed through
// the next replica, which fetched the blob from the upstream again.
func TestServeBlobOwnerDownSlowClientNotCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const peer = "http://owner.test:5000"
		pr, pw := io.Pipe()
		var body []byte
		rt := roundTrip(func(r *http.Request) (*http.Response, error) {
			if r.URL.Host != "owner.test:5000" || r.URL.Path == "/readyz" {
				return &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			}
			go func() {
				<-r.Context().Done()
				pw.CloseWithError(context.Cause(r.Context()))
			}()
			go func() { // the owner sends it all, as fast as it is taken
				pw.Write(body[:3])
				pw.Write(body[3:])
				pw.Close()
			}()
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, ContentLength: int64(len(body)), Body: pr, Request: r}, nil
		})
		c, err := New("http://self.test:5000", []string{peer}, quiet(), WithTransport(rt), WithProbeTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		body, d := ownedBy(t, c, peer)
		w := slowClient{httptest.NewRecorder(), make(chan struct{}), make(chan struct{}), new(sync.Once)}
		done := make(chan error, 1)
		go func() {
			_, err := c.ServeBlob(w, blobRequest(d), d)
			done <- err
		}()
		<-w.writing
		c.Probe(context.Background()) // 503: stopping, marked down
		if peerUp(c, peer) {
			t.Fatal("owner still up")
		}
		time.Sleep(time.Minute) // the client takes its bytes slowly
		synctest.Wait()
		close(w.gate)
		if err := <-done; err != nil || w.Body.String() != string(body) {
			t.Fatalf("an answer whose client read slowly, its owner marked down: err %v, body %q; want the whole blob", err, w.Body.String())
		}
	})
}

// TestServeBlobCutsAtOnceProbeTheOwnerOnce: many answers of one owner
// cut at once (a rolling update: every client's blob from it broken
// together) ask its /readyz once between them, not once each: a hundred
// clients made a hundred probes of a replica already struggling.
func TestServeBlobCutsAtOnceProbeTheOwnerOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const peer, cuts = "http://owner.test:5000", 8
		var probes atomic.Int32
		answer := make(chan struct{})
		blobs := map[string][]byte{}
		rt := roundTrip(func(r *http.Request) (*http.Response, error) {
			switch {
			case r.URL.Host != "owner.test:5000":
				return &http.Response{StatusCode: http.StatusInternalServerError, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			case r.URL.Path == "/readyz":
				probes.Add(1)
				<-answer
				return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			}
			b := blobs[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]]
			pr, pw := io.Pipe()
			go func() {
				pw.Write(b[:1])
				pw.CloseWithError(io.ErrUnexpectedEOF) // its upstream failed it
			}()
			return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, ContentLength: int64(len(b)), Body: pr, Request: r}, nil
		})
		c, err := New("http://self.test:5000", []string{peer}, quiet(), WithTransport(rt), WithProbeTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; len(blobs) < cuts; i++ {
			b := []byte(fmt.Sprintf("blob %d", i))
			if d := digest.FromBytes(b); c.Owners(d.String())[0] == peer {
				blobs[d.String()] = b
			}
		}
		var wg sync.WaitGroup
		for d := range blobs {
			wg.Go(func() { c.ServeBlob(httptest.NewRecorder(), blobRequest(digest.Digest(d)), digest.Digest(d)) })
		}
		synctest.Wait() // every answer cut, its owner being probed
		close(answer)
		wg.Wait()
		if n := probes.Load(); n != 1 {
			t.Errorf("%d answers cut at once probed their owner %d times, want once", cuts, n)
		}
		if !peerUp(c, peer) {
			t.Errorf("the owner, answering its /readyz, was marked down: %+v", c.Peers())
		}
	})
}

// TestServeBlobEndedByMarkDownKeepsThePeersState: a request to an owner
// that its probe found not ready (shutting down: /readyz answers 503)
// while the request waited for its answer ends, and the owner's state
// stays what its probe found: not ready, and why. The request's end
// marked it down once more, with its own cancellation as the error: the
// status page showed the replica "unreachable", "context canceled".
func TestServeBlobEndedByMarkDownKeepsThePeersState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const peer = "http://owner.test:5000"
		rt := roundTrip(func(r *http.Request) (*http.Response, error) {
			if r.URL.Path == "/readyz" {
				return &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
			}
			<-r.Context().Done() // no answer yet
			return nil, r.Context().Err()
		})
		c, err := New("http://self.test:5000", []string{peer}, quiet(), WithTransport(rt), WithProbeTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		_, d := ownedBy(t, c, peer)
		done := make(chan bool, 1)
		go func() {
			served, _ := c.ServeBlob(httptest.NewRecorder(), blobRequest(d), d)
			done <- served
		}()
		synctest.Wait() // the request waits for the owner's answer
		c.Probe(context.Background())
		if served := <-done; served {
			t.Fatal("served by an owner that never answered")
		}
		st := c.Peers()[1]
		if st.Up || !st.NotReady || st.Error != "/readyz answered 503" {
			t.Errorf("owner found not ready by its probe, after a request to it ended: %+v; want not ready, /readyz answered 503", st)
		}
	})
}
