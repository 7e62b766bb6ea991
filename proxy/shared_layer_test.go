package proxy

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage/destination"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A layer two repositories share, downloaded for one of them while the
// fill of the other needs it: the fill shares the download (the upstream
// sends the layer once), and a registry destination, which keeps blobs
// per repository, ends up with it in both: mounted, or, from a
// destination that does not mount blobs, read back and uploaded.
func TestFillSharingAnotherRepositorysDownloadStoresItThere(t *testing.T) {
	t.Run("mounted", func(t *testing.T) { fillSharingADownload(t, true) })
	t.Run("without mounts", func(t *testing.T) { fillSharingADownload(t, false) })
}

func fillSharingADownload(t *testing.T, mounts bool) {
	layer := bytes.Repeat([]byte("shared base layer "), 1<<12)
	d := digest.FromBytes(layer)
	started, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	defer open()
	var gets atomic.Int32 // upstream GETs of the layer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			if r.URL.Path != "/v2/" {
				http.NotFound(w, r)
			}
			return
		}
		gets.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(layer)))
		_, _ = w.Write(layer[:1024])
		http.NewResponseController(w).Flush()
		close(started)
		<-release // the download streams until the test lets it end
		_, _ = w.Write(layer[1024:])
	}))
	defer srv.Close()
	dest := fixture.StartDestination(t, nil)
	destURL := dest.URL()
	if !mounts {
		// A destination that answers every mount with an upload session.
		u, _ := url.Parse(destURL)
		rp := httputil.NewSingleHostReverseProxy(u)
		front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			q.Del("mount")
			q.Del("from")
			r.URL.RawQuery = q.Encode()
			rp.ServeHTTP(w, r)
		}))
		defer front.Close()
		destURL = front.URL
	}
	store, err := destination.New(destURL + "/mirror")
	if err != nil {
		t.Fatal(err)
	}
	defer store.CloseIdleConnections()
	p, up, index := testMirror(t, store, srv.URL)

	size := int64(len(layer))
	a := target{up: up, repo: "library/python", name: "python"}
	b := target{up: up, repo: "library/node", name: "node"}
	// python's fill downloads the layer.
	dl, leave, _, err := p.startBlob(t.Context(), a, d, blobWant{listed: true, mirror: true, size: size})
	if err != nil {
		t.Fatal(err)
	}
	recv(t, started, "the layer's download")
	// node's fill needs it meanwhile: it joins the download.
	joined := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- p.ensureBlob(withRequested(t.Context(), sync.OnceFunc(func() { close(joined) })), b, d, size, nil)
	}()
	recv(t, joined, "node's fill to join the download")
	open()
	recv(t, dl.finished, "the download to end")
	leave()
	if ferr := recvWithin(t, done, "node's fill"); ferr != nil {
		t.Errorf("node's fill, sharing python's download: %v", ferr)
	}
	for _, repo := range []string{"library/python", "library/node"} {
		if got, err := store.Stat(t.Context(), repo, d); err != nil || got != size {
			t.Errorf("destination's %s: Stat = %d, %v; want the layer", repo, got, err)
		}
	}
	if linked, err := index.Linked(DefaultHost, "library/node", d); err != nil || !linked {
		t.Errorf("layer linked to node: %v, %v", linked, err)
	}
	uploaded := false
	for _, r := range dest.Requests() {
		uploaded = uploaded || r.IsUpload() && strings.HasPrefix(r.Path, "/v2/mirror/library/node/") && r.Method == http.MethodPut
		if mounts && r.IsUpload() && strings.HasPrefix(r.Path, "/v2/mirror/library/node/") && r.Method != http.MethodPost {
			t.Errorf("layer uploaded to node (%+v); want it mounted from python", r)
		}
		// A mount moves no bytes: the layer is not read back either.
		if mounts && r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/blobs/"+d.String()) {
			t.Errorf("layer read back from the destination (%+v); want it mounted without its bytes", r)
		}
	}
	if !mounts && !uploaded {
		t.Errorf("no upload to node from a destination that does not mount")
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d upstream GETs of the layer; want 1", n)
	}
}
