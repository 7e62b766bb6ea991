package proxy

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// headersSent is a recorder that tells (wrote) when its headers are sent.
type headersSent struct {
	*httptest.ResponseRecorder
	wrote func()
}

func (w *headersSent) WriteHeader(code int) {
	w.wrote()
	w.ResponseRecorder.WriteHeader(code)
}

func (w *headersSent) Unwrap() http.ResponseWriter { return w.ResponseRecorder }

// A HEAD, and a conditional GET, of a blob whose download is answering
// another client are answered from the download, the upstream not asked:
// as the herd's GETs, they are hits (operations.md's X-Cache words). The
// HEAD said miss, and the conditional GET revalidated, which says the
// upstream's HEAD confirmed the blob.
func TestBlobAskedWithoutItsBytesDuringAClientsDownloadIsAHit(t *testing.T) {
	layer := bytes.Repeat([]byte("a layer downloading for a client "), 1<<12)
	d := digest.FromBytes(layer)
	started, release := make(chan struct{}), make(chan struct{})
	open := sync.OnceFunc(func() { close(release) })
	defer open()
	var heads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			if r.URL.Path != "/v2/" {
				http.NotFound(w, r)
			}
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(layer)))
		if r.Method == http.MethodHead {
			heads.Add(1)
			return
		}
		_, _ = w.Write(layer[:1024])
		http.NewResponseController(w).Flush()
		close(started)
		<-release
		_, _ = w.Write(layer[1024:])
	}))
	defer srv.Close()
	p, _, _ := testMirror(t, nil, srv.URL)
	path := "/v2/library/app/blobs/" + d.String()

	answering := make(chan struct{})
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w := &headersSent{ResponseRecorder: httptest.NewRecorder(), wrote: sync.OnceFunc(func() { close(answering) })}
		p.Handler().ServeHTTP(w, httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil))
		first <- w.ResponseRecorder
	}()
	recv(t, started, "the blob's download")
	recv(t, answering, "the first client's answer")

	for _, c := range []struct {
		method, ifNoneMatch string
		code                int
	}{
		{http.MethodHead, "", http.StatusOK},
		{http.MethodGet, `"` + d.String() + `"`, http.StatusNotModified},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), c.method, path, nil)
		if c.ifNoneMatch != "" {
			req.Header.Set("If-None-Match", c.ifNoneMatch)
		}
		p.Handler().ServeHTTP(rec, req)
		if rec.Code != c.code || rec.Header().Get(cacheHeader) != "hit" {
			t.Errorf("%s (If-None-Match %q) during the download: %d, X-Cache %q; want %d, hit", c.method, c.ifNoneMatch, rec.Code, rec.Header().Get(cacheHeader), c.code)
		}
	}
	if n := heads.Load(); n != 0 {
		t.Errorf("the upstream was asked %d HEADs of the blob; want none: the download's answer says it", n)
	}
	open()
	w := recvWithin(t, first, "the first client's answer")
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), layer) || w.Header().Get(cacheHeader) != "miss" {
		t.Errorf("the first client: %d, %d bytes, X-Cache %q; want 200, the layer, miss", w.Code, w.Body.Len(), w.Header().Get(cacheHeader))
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
}
