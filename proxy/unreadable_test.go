package proxy

import (
	"cmp"
	"context"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"syscall"
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

// A stored manifest whose reads fail (bad sectors: EIO; or EACCES: a
// file restored as another user) is removed and fetched again, as a
// corrupt one is: it was answered 500 at every pull, by digest and by
// tag, until verify --repair removed it.
func TestUnreadableManifestFetchedAgain(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.EACCES} {
		for _, by := range []string{"digest", "tag"} {
			t.Run(errno.Error()+" "+by, func(t *testing.T) { unreadableManifestFetchedAgain(t, errno, by) })
		}
	}
}

// unreadableManifestFetchedAgain is one case of TestUnreadableManifestFetchedAgain.
func unreadableManifestFetchedAgain(t *testing.T, errno syscall.Errno, by string) {
	mem, _ := memStore(t)
	bad := storetest.NewBadSectors(mem.Driver())
	bad.Errno = errno
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
}

// unopenable is a store whose file of one blob, once armed, cannot be
// opened or stat'ed (bad sectors under its inode: EIO, or errno if set),
// until it is removed.
type unopenable struct {
	*storage.DriverStore
	dgst  digest.Digest
	errno syscall.Errno
	armed atomic.Bool
}

func (s *unopenable) eio(dgst digest.Digest) error {
	if dgst != s.dgst || !s.armed.Load() {
		return nil
	}
	return &fs.PathError{Op: "open", Path: "data", Err: cmp.Or(s.errno, syscall.EIO)}
}

func (s *unopenable) OpenFile(dgst digest.Digest) (storage.File, int64, error) {
	if err := s.eio(dgst); err != nil {
		return nil, 0, err
	}
	return s.DriverStore.OpenFile(dgst)
}

func (s *unopenable) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	if err := s.eio(dgst); err != nil {
		return 0, err
	}
	return s.DriverStore.Stat(ctx, repo, dgst)
}

func (s *unopenable) Delete(ctx context.Context, repo string, dgst digest.Digest) error {
	if dgst == s.dgst {
		s.armed.Store(false)
	}
	return s.DriverStore.Delete(ctx, repo, dgst)
}

// A stored blob whose file cannot be opened or stat'ed (EIO; or EACCES:
// a file restored as another user, its mode changed by hand) is removed
// and fetched again, a GET and a HEAD answered as misses: each was
// answered 500 at every pull.
func TestUnopenableBlobFetchedAgain(t *testing.T) {
	for _, tc := range []struct {
		method string
		errno  syscall.Errno
	}{{http.MethodGet, syscall.EIO}, {http.MethodHead, syscall.EIO}, {http.MethodGet, syscall.EACCES}, {http.MethodHead, syscall.EACCES}} {
		method := tc.method
		t.Run(method+" "+tc.errno.Error(), func(t *testing.T) {
			body := []byte(strings.Repeat("layer bytes ", 1000))
			d := digest.FromBytes(body)
			mem, _ := memStore(t)
			store := &unopenable{DriverStore: mem, dgst: d, errno: tc.errno}
			p, _, _ := testMirror(t, store, blobUpstream(t, body))
			srv := httptest.NewServer(p.Handler())
			defer srv.Close()
			do := func(method string) (int, string) {
				t.Helper()
				req, err := http.NewRequest(method, srv.URL+"/v2/library/app/blobs/"+d.String(), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				return resp.StatusCode, string(b)
			}
			if code, got := do(http.MethodGet); code != http.StatusOK || got != string(body) {
				t.Fatalf("first GET: %d %.200s", code, got)
			}
			if err := p.WaitIdle(t.Context()); err != nil {
				t.Fatal(err)
			}
			store.armed.Store(true)
			code, got := do(method)
			if want := map[string]string{http.MethodGet: string(body), http.MethodHead: ""}[method]; code != http.StatusOK || got != want {
				t.Errorf("%s of a blob whose file cannot be opened: %d %.200s", method, code, got)
			}
			if store.armed.Load() {
				t.Error("the unopenable copy was kept")
			}
		})
	}
}
