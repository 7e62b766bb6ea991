package proxy

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A client of one repository that joins a download running for another
// (its upstream vouching for the blob), just as the download ends, finds
// its spool file gone: it is then served what the download stored, which
// a registry destination keeps under the download's repository, not the
// client's. It was answered BLOB_UNKNOWN, as if the blob were missing.
// (The spool file is removed by hand while the download is held: the
// state a joiner finds whose open comes after the download's end.)
func TestClientJoiningADownloadAsItEndsIsServedWhatItStored(t *testing.T) {
	layer := bytes.Repeat([]byte("shared base layer "), 1<<12)
	d := digest.FromBytes(layer)
	started, release := make(chan struct{}), make(chan struct{})
	open := sync.OnceFunc(func() { close(release) })
	defer open()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			if r.URL.Path != "/v2/" {
				http.NotFound(w, r)
			}
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(layer)))
		if r.Method == http.MethodHead {
			return // node's upstream has the blob too
		}
		_, _ = w.Write(layer[:1024])
		http.NewResponseController(w).Flush()
		close(started)
		<-release
		_, _ = w.Write(layer[1024:])
	}))
	defer srv.Close()
	dest := fixture.StartDestination(t, nil)
	store, err := destination.New(dest.URL() + "/mirror")
	if err != nil {
		t.Fatal(err)
	}
	defer store.CloseIdleConnections()
	p, up, _ := testMirror(t, store, srv.URL)
	python := target{up: up, repo: "library/python", name: "python"}

	// python's fill downloads the layer.
	dl, leave, _, err := p.startBlob(t.Context(), python, d, blobWant{listed: true, mirror: true, size: int64(len(layer))})
	if err != nil {
		t.Fatal(err)
	}
	defer leave()
	recv(t, started, "the layer's download")
	if _, err := dl.waitSpooled(readCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dl.path); err != nil {
		t.Fatal(err)
	}

	// node's client joins it.
	joined := make(chan struct{})
	answered := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w := httptest.NewRecorder()
		ctx := withRequested(t.Context(), sync.OnceFunc(func() { close(joined) }))
		p.Handler().ServeHTTP(w, httptest.NewRequestWithContext(ctx, http.MethodGet, "/v2/library/node/blobs/"+d.String(), nil))
		answered <- w
	}()
	recv(t, joined, "node's client to join the download")
	open()
	w := recvWithin(t, answered, "node's client's answer")
	if w.Code != http.StatusOK || !bytes.Equal(w.Body.Bytes(), layer) {
		t.Fatalf("node's client: status %d, %d bytes (%.200s); want 200 and the layer's %d", w.Code, w.Body.Len(), w.Body.Bytes(), len(layer))
	}
}
