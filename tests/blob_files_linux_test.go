package tests

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A blob GET that hits opens the blob's file once, to learn its size and
// to serve it: every answer closes it, whether it sends the file (a GET,
// a Range), sends none of it (a Range past its end, a HEAD, which only
// stats it) or refuses the blob to a repository it is not linked to. The
// file descriptors this process holds on stored blobs, once every
// handler has returned, must be none.
func TestBlobHitsCloseTheirFiles(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/files", "v1", 3, 64<<10)
	m := servertest.Start(t, up.URL())
	wantImage(t, m, "files", img)
	m.WaitIdle()

	// A server of the mirror's handler whose Close waits for every
	// request's handler to return.
	hs := httptest.NewServer(m.Server.Handler())
	for _, b := range img.Blobs() {
		whole := blobOf(t, up, "library/files", b)
		url := hs.URL + "/v2/files/blobs/" + b
		if r := get(t, url); r.status != http.StatusOK || !bytes.Equal(r.body, whole) || r.header.Get("X-Cache") != "hit" {
			t.Fatalf("GET %s: %d, %d bytes, X-Cache %q", b, r.status, len(r.body), r.header.Get("X-Cache"))
		}
		if r := do(t, http.MethodHead, url, nil); r.status != http.StatusOK || r.header.Get("Content-Length") != strconv.Itoa(len(whole)) {
			t.Fatalf("HEAD %s: %d, Content-Length %q", b, r.status, r.header.Get("Content-Length"))
		}
		if r := do(t, http.MethodGet, url, map[string]string{"Range": "bytes=100-"}); r.status != http.StatusPartialContent || !bytes.Equal(r.body, whole[100:]) {
			t.Fatalf("GET %s from byte 100: %d, %d bytes", b, r.status, len(r.body))
		}
		if r := do(t, http.MethodGet, url, map[string]string{"Range": "bytes=" + strconv.Itoa(len(whole)) + "-"}); r.status != http.StatusRequestedRangeNotSatisfiable {
			t.Fatalf("GET %s past its end: %d, want 416", b, r.status)
		}
		// Stored, but not for this repository, which the upstream says
		// does not have it.
		if r := get(t, hs.URL+"/v2/other/blobs/"+b); r.status != http.StatusNotFound {
			t.Fatalf("GET %s in another repository: %d, want 404", b, r.status)
		}
	}
	hs.Close()

	links, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		target, err := os.Readlink(l)
		if err == nil && strings.HasPrefix(target, m.Dir()+"/") && strings.HasSuffix(target, "/data") {
			t.Errorf("a stored blob is still open: %s", target)
		}
	}
}
