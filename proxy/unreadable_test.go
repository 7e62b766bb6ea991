package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A stored blob whose reads fail (bad sectors: EIO) is cut short once,
// and its copy removed: the next pull fetches it again from the upstream,
// and with the upstream down is answered an error, not another body cut
// short. It was cut short at every pull until verify --repair removed it.
func TestUnreadableBlobFetchedAgain(t *testing.T) {
	for _, upstreamDown := range []bool{false, true} {
		t.Run(map[bool]string{false: "upstream up", true: "upstream down"}[upstreamDown], func(t *testing.T) {
			body := []byte(strings.Repeat("layer bytes ", 1000))
			d := digest.FromBytes(body)
			mem, _ := memStore(t)
			bad := storetest.NewBadSectors(mem.Driver())
			up, err := url.Parse(blobUpstream(t, body))
			if err != nil {
				t.Fatal(err)
			}
			front := httptest.NewServer(httputil.NewSingleHostReverseProxy(up))
			defer front.Close()
			p, _, _ := testMirror(t, storage.NewDriverStore(bad), front.URL)
			srv := httptest.NewServer(p.Handler())
			defer srv.Close()
			get := func() (int, string, error) {
				t.Helper()
				resp, err := http.Get(srv.URL + "/v2/library/app/blobs/" + d.String())
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b), err
			}
			if code, got, err := get(); code != http.StatusOK || got != string(body) || err != nil {
				t.Fatalf("first GET: %d %v %.200s", code, err, got)
			}
			if err := p.WaitIdle(t.Context()); err != nil {
				t.Fatal(err)
			}
			bad.FailBlob(d)
			if code, got, err := get(); err == nil && code == http.StatusOK {
				t.Fatalf("GET of an unreadable blob answered whole: %d %.200s", code, got)
			}
			if upstreamDown {
				front.Close()
				code, got, err := get()
				if err != nil || code < 500 {
					t.Errorf("GET after the stored copy failed a read, upstream down: %d %v %.200s; want a 5xx", code, err, got)
				}
				return
			}
			if code, got, err := get(); code != http.StatusOK || got != string(body) || err != nil {
				t.Errorf("GET after the stored copy failed a read: %d %v %.200s; want it fetched again", code, err, got)
			}
		})
	}
}

// A stored manifest whose reads fail (bad sectors: EIO) is removed and
// fetched again, as a corrupt one is: it was answered 500 at every pull,
// by digest and by tag, until verify --repair removed it.
func TestUnreadableManifestFetchedAgain(t *testing.T) {
	for _, by := range []string{"digest", "tag"} {
		t.Run(by, func(t *testing.T) {
			mem, _ := memStore(t)
			bad := storetest.NewBadSectors(mem.Driver())
			f := &writesFixture{up: fixture.StartUpstream(t), store: &gatedStore{Store: storage.NewDriverStore(bad)}}
			f.p, _, f.index = testMirror(t, f.store, f.up.URL())
			srv := httptest.NewServer(f.p.Handler())
			defer srv.Close()
			f.url = srv.URL
			img := f.up.SeedImage(t, "library/app", "v1", 2, 4<<10)
			f.request(t, http.MethodGet, "/v2/library/app/manifests/v1", img.Manifest, img.MediaType, "miss")
			f.waitIdle(t)
			bad.FailBlob(digest.Digest(img.Digest))
			ref := map[string]string{"digest": img.Digest, "tag": "v1"}[by]
			f.request(t, http.MethodGet, "/v2/library/app/manifests/"+ref, img.Manifest, img.MediaType, "")
			f.request(t, http.MethodGet, "/v2/library/app/manifests/"+ref, img.Manifest, img.MediaType, "")
		})
	}
}
