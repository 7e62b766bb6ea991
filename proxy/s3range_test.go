package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
)

// s3Sent is an S3 endpoint in front of a real one that counts the body
// bytes it sends in answer to the GETs of blob content, and the Range
// each asked for. With cutAfter set, the first such answer breaks after
// that many bytes of its body (a connection reset).
type s3Sent struct {
	next     http.Handler
	cutAfter int64
	bytes    atomic.Int64
	mu       sync.Mutex
	ranges   []string
	done     chan struct{} // one value at the end of each GET of a blob
}

func (s *s3Sent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	d := digest.FromBytes(body)
	for _, c := range []struct {
		name         string
		first, last  int64
		cutAfter     int64
		wantRequests int
	}{
		{"1KiB", 1 << 20, 1<<20 + 1023, 0, 1},
		{"read cut", 1 << 20, 1<<20 + 256<<10 - 1, 100 << 10, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			front := &s3Sent{next: httputil.NewSingleHostReverseProxy(u), cutAfter: c.cutAfter, done: make(chan struct{}, 16)}
			fsrv := httptest.NewServer(front)
			t.Cleanup(fsrv.Close)
			params := srv.Params(srv.NewBucket(t))
			params["regionendpoint"] = fsrv.URL
			store, err := storage.OpenDriverStore(t.Context(), "s3aws", params)
			if err != nil {
				t.Fatal(err)
			}
			p, up, _ := testMirror(t, store, "http://127.0.0.1:1")
			tg := target{up: up, repo: "library/app", name: "app"}
			if err := store.Put(t.Context(), tg.storeRepo(), d, int64(len(body)), bytes.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			if err := p.index.RecordBlob(tg.host(), tg.repo, d, int64(len(body)), time.Now()); err != nil {
				t.Fatal(err)
			}
			msrv := httptest.NewServer(p.Handler())
			defer msrv.Close()
			req, _ := http.NewRequest(http.MethodGet, msrv.URL+"/v2/library/app/blobs/"+d.String(), nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", c.first, c.last))
			resp, err := msrv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
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
					t.Fatal("the GETs of the blob from S3 did not end")
				}
			}
			front.mu.Lock()
			ranges := front.ranges
			front.mu.Unlock()
			for _, r := range ranges {
				if !strings.HasSuffix(r, fmt.Sprintf("-%d", c.last)) {
					t.Errorf("S3 was asked for %q; want ranges that end at the range's end, %d", ranges, c.last)
					break
				}
			}
			if n := front.bytes.Load(); c.cutAfter == 0 && n != length {
				t.Errorf("S3 sent %d bytes of the blob (Range %q) for a range of %d; want the range's only", n, ranges, length)
			}
		})
	}
}
