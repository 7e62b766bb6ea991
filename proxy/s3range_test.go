package proxy

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// blobSent is a store's endpoint (S3's, a destination registry's) in
// front of a real one that counts the body bytes it sends in answer to
// the GETs of blob content, and the Range each asked for. With cutAfter
// set, the first such answer breaks after that many bytes of its body (a
// connection reset).
type blobSent struct {
	next     http.Handler
	cutAfter int64
	bytes    atomic.Int64
	mu       sync.Mutex
	ranges   []string
	done     chan struct{} // one value at the end of each GET of a blob
}

// newBlobSent returns a blobSent in front of next.
func newBlobSent(next http.Handler, cutAfter int64) *blobSent {
	return &blobSent{next: next, cutAfter: cutAfter, done: make(chan struct{}, 16)}
}

func (s *blobSent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		s.next.ServeHTTP(w, r)
		return
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	first := len(s.ranges) == 1
	s.mu.Unlock()
	defer func() { s.done <- struct{}{} }()
	cw := &countingWriter{ResponseWriter: w, n: &s.bytes, left: -1}
	if first && s.cutAfter > 0 {
		cw.left = s.cutAfter
	}
	s.next.ServeHTTP(cw, r)
}

// countingWriter counts the body bytes written to its client, and
// breaks the connection once left of them (if not negative) are out.
type countingWriter struct {
	http.ResponseWriter
	n    *atomic.Int64
	left int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	cut := c.left >= 0 && int64(len(b)) >= c.left
	if cut {
		b = b[:c.left]
	}
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	if cut {
		c.Flush()
		panic(http.ErrAbortHandler)
	}
	if c.left >= 0 {
		c.left -= int64(n)
	}
	return n, err
}

func (c *countingWriter) Flush() { http.NewResponseController(c.ResponseWriter).Flush() }

// rangeHit is a Range request for part of a stored blob (a lazy
// puller's, a resume's), answered from a store behind a blobSent.
type rangeHit struct {
	name         string
	first, last  int64
	cutAfter     int64
	wantRequests int
}

// checkRangeHit stores body in store (behind front), asks the mirror for
// c's range of it, and checks the answer, and that the store was asked
// for that range only and sent no more (unless its read was cut).
func checkRangeHit(t *testing.T, store storage.Store, front *blobSent, body []byte, c rangeHit) {
	t.Helper()
	p, up, _ := testMirror(t, store, "http://127.0.0.1:1")
	d := storeHit(t, p, target{up: up, repo: "library/app", name: "app"}, store, body)
	resp, got, err := getBlob(t, p, d, fmt.Sprintf("bytes=%d-%d", c.first, c.last))
	length := c.last - c.first + 1
	if resp.StatusCode != http.StatusPartialContent || err != nil || !bytes.Equal(got, body[c.first:c.last+1]) {
		t.Fatalf("status %d, %d bytes, err %v; want 206 and the range's %d bytes", resp.StatusCode, len(got), err, length)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for range c.wantRequests {
		select {
		case <-front.done:
		case <-ctx.Done():
			t.Fatal("the GETs of the blob from the store did not end")
		}
	}
	front.mu.Lock()
	ranges := front.ranges
	front.mu.Unlock()
	for _, r := range ranges {
		if !strings.HasSuffix(r, fmt.Sprintf("-%d", c.last)) {
			t.Errorf("the store was asked for %q; want ranges that end at the range's end, %d", ranges, c.last)
			break
		}
	}
	if n := front.bytes.Load(); c.cutAfter == 0 && n != length {
		t.Errorf("the store sent %d bytes of the blob (Range %q) for a range of %d; want the range's only", n, ranges, length)
	}
}

// A Range request for part of a blob held in S3 (a lazy puller's, a
// resume's) asks S3 for that range only: it asked for the rest of the
// object, from the range's start to the blob's end, and read the range
// from it, so that S3 sent (and the mirror dropped) what the connection
// held by the time it closed, and the connection was lost, for every
// range of a large layer. A read of the range that breaks is read on
// from where it broke to the range's end, not the blob's.
func TestHitRangeFromS3ReadsTheRangeOnly(t *testing.T) {
	srv := s3test.Start(t)
	u, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	for _, c := range []rangeHit{
		{"1KiB", 1 << 20, 1<<20 + 1023, 0, 1},
		{"read cut", 1 << 20, 1<<20 + 256<<10 - 1, 100 << 10, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			front := newBlobSent(httputil.NewSingleHostReverseProxy(u), c.cutAfter)
			fsrv := httptest.NewServer(front)
			t.Cleanup(fsrv.Close)
			params := srv.Params(srv.NewBucket(t))
			params["regionendpoint"] = fsrv.URL
			store, err := storage.OpenDriverStore(t.Context(), "s3aws", params)
			if err != nil {
				t.Fatal(err)
			}
			checkRangeHit(t, store, front, body, c)
		})
	}
}

// A Range request for part of a blob held by a registry destination asks
// the destination for that range only: as from S3 (above), it asked for
// the rest of the blob from the range's start, which the destination
// sent until the mirror closed the connection, for every range of a
// large layer.
func TestHitRangeFromDestinationReadsTheRangeOnly(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	for _, c := range []rangeHit{
		{"1KiB", 1 << 20, 1<<20 + 1023, 0, 1},
		{"read cut", 1 << 20, 1<<20 + 256<<10 - 1, 100 << 10, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			var front *blobSent
			dest := fixture.StartDestination(t, nil, fixture.WithFrontEnd(func(h http.Handler) http.Handler {
				front = newBlobSent(h, c.cutAfter)
				return front
			}))
			store, err := destination.New(dest.URL() + "/mirror")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(store.CloseIdleConnections)
			checkRangeHit(t, store, front, body, c)
		})
	}
}
