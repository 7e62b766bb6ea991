package proxy

import (
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// blobUpstream is a registry that serves one blob to anyone.
func blobUpstream(t *testing.T, body []byte) string {
	t.Helper()
	d := digest.FromBytes(body)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()):
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			_, _ = w.Write(body)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(up.Close)
	return up.URL
}

// On a full spool disk a blob miss is answered 507 with an error that
// says the store is full, whether the spool file cannot be created or
// its first write finds no space (a real ENOSPC from the kernel, by
// writing to /dev/full); the store is full until a write succeeds.
func TestSpoolFull(t *testing.T) {
	body := []byte(strings.Repeat("layer bytes ", 1000))
	d := digest.FromBytes(body)
	store, index := memStore(t)
	up, err := upstream.New(DefaultHost, blobUpstream(t, body))
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	p, err := New(store, index, []*upstream.Client{up}, WithSpoolDir(spool), WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	get := func(t *testing.T, path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}

	cases := map[string]func(dir string) (*os.File, error){
		"create": func(dir string) (*os.File, error) {
			return nil, &fs.PathError{Op: "open", Path: filepath.Join(dir, "blob-1"), Err: syscall.ENOSPC}
		},
	}
	if _, err := os.Stat("/dev/full"); err == nil {
		cases["write"] = func(dir string) (*os.File, error) {
			// A link, so that removing the spool file removes the link.
			link, err := os.CreateTemp(dir, "blob-*")
			if err != nil {
				return nil, err
			}
			link.Close()
			if err := os.Remove(link.Name()); err != nil {
				return nil, err
			}
			if err := os.Symlink("/dev/full", link.Name()); err != nil {
				return nil, err
			}
			return os.OpenFile(link.Name(), os.O_RDWR, 0)
		}
	}
	setCreate := func(create func(string) (*os.File, error)) {
		p.blobs.mu.Lock()
		p.blobs.create = create
		p.blobs.mu.Unlock()
	}
	for name, create := range cases {
		t.Run(name, func(t *testing.T) {
			setCreate(create)
			status, msg := get(t, "/v2/library/x/blobs/"+d.String())
			if status != http.StatusInsufficientStorage || !strings.Contains(msg, `"UNAVAILABLE"`) || !strings.Contains(msg, "store is full") {
				t.Fatalf("blob miss on a full spool: %d %s; want 507 saying the store is full", status, msg)
			}
			if !p.StoreFull() {
				t.Error("store not marked full")
			}
			if status, msg := get(t, "/readyz"); status != http.StatusOK || !strings.Contains(msg, "store full") {
				t.Errorf("/readyz: %d %q", status, msg)
			}
		})
	}
	setCreate(newDownloads().create)
	if status, msg := get(t, "/v2/library/x/blobs/"+d.String()); status != http.StatusOK || msg != string(body) {
		t.Fatalf("blob miss with room: %d %.100s", status, msg)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if p.StoreFull() {
		t.Error("still full after a blob was stored")
	}
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Fatalf("/dev/full: %v", err)
	}
}
