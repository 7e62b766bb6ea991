package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A blob verified while another download still streams is served at once
// (from its spool file) but stored and recorded only once the other is
// done: its fsync and commit no longer stall the other's spool writes.
func TestVerifiedBlobStoredOnceDownloadsAreQuiet(t *testing.T) {
	small, large := []byte("small layer"), bytes.Repeat([]byte("large layer "), 1<<14)
	smallD, largeD := digest.FromBytes(small), digest.FromBytes(large)
	largeStarted, largeRelease := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(largeRelease) }) }
	defer release()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/blobs/"+smallD.String()):
			w.Header().Set("Content-Length", strconv.Itoa(len(small)))
			_, _ = w.Write(small)
		case strings.HasSuffix(r.URL.Path, "/blobs/"+largeD.String()):
			w.Header().Set("Content-Length", strconv.Itoa(len(large)))
			_, _ = w.Write(large[:1024])
			http.NewResponseController(w).Flush()
			close(largeStarted)
			<-largeRelease // the download streams until the test lets it end
			_, _ = w.Write(large[1024:])
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	store, err := storage.OpenDriverStore(t.Context(), "filesystem", map[string]any{"rootdirectory": dir})
	if err != nil {
		t.Fatal(err)
	}
	p, up, index := testMirror(t, store, srv.URL)
	front := httptest.NewServer(p.Handler())
	defer func() {
		release()
		front.Close()
	}()
	waiting := make(chan struct{})
	p.blobs.quiet.wait = time.Hour // only the end of the other download ends the wait
	p.blobs.quiet.waiting = sync.OnceFunc(func() { close(waiting) })

	tg := target{up: up, repo: "library/x", name: "x"}
	largeDl, leave, _, err := p.startBlob(t.Context(), tg, largeD, blobWant{size: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer leave()
	recv(t, largeStarted, "the large layer's download")
	// Its first bytes are spooled: it is counted as streaming by then (the
	// upstream's flush alone does not say the mirror has read them).
	if _, err := largeDl.waitSpooled(t.Context()); err != nil {
		t.Fatal(err)
	}

	get := func() {
		t.Helper()
		resp, err := http.Get(front.URL + "/v2/library/x/blobs/" + smallD.String())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, small) {
			t.Fatalf("GET the small layer: %d, %v, %q", resp.StatusCode, err, body)
		}
	}
	get()
	dl := p.blobs.running(smallD)
	if dl == nil {
		t.Fatal("the small layer's download ended while the large one streams")
	}
	select {
	case <-waiting:
	case <-dl.finished:
		t.Fatal("the small layer was stored while the large one streams")
	}
	if _, err := store.Stat(t.Context(), "library/x", smallD); err == nil {
		t.Fatal("the small layer is in the store while the large one streams")
	}
	get() // still served meanwhile, from the spool file

	release()
	recv(t, largeDl.finished, "the large layer's download to end")
	leave()
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []digest.Digest{smallD, largeD} {
		if _, err := store.Stat(t.Context(), "library/x", d); err != nil {
			t.Errorf("%s not stored: %v", d, err)
		}
		if linked, err := index.Linked(DefaultHost, "library/x", d); err != nil || !linked {
			t.Errorf("%s not recorded: %v", d, err)
		}
	}
}
