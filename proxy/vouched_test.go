package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// heldIngest is a filesystem store whose first Ingest of a digest moves
// the spool file into the store and then waits for the test: the blob is
// stored, its download not yet recorded.
type heldIngest struct {
	*storage.DriverStore
	dgst    digest.Digest
	moved   chan struct{}
	release chan struct{}
}

func (s *heldIngest) Ingest(ctx context.Context, repo string, dgst digest.Digest, size int64, path string) error {
	err := s.DriverStore.Ingest(ctx, repo, dgst, size, path)
	if dgst == s.dgst {
		close(s.moved)
		<-s.release
	}
	return err
}

// A blob asked for between its download's store and its record (stored,
// linked to no repository yet) is served from the store without asking
// the upstream whether the repository has it: its own download vouches
// for it. Before, each such request cost an upstream HEAD (a round trip
// on the client's path), 2 to 14 per cold pull of ten layers.
func TestBlobBetweenStoreAndRecordAsksNoUpstream(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 64<<10)
	layer := img.Layers[0]
	dir := t.TempDir()
	ds, err := storage.OpenDriverStore(t.Context(), "filesystem", map[string]any{"rootdirectory": dir})
	if err != nil {
		t.Fatal(err)
	}
	store := &heldIngest{DriverStore: ds, dgst: digest.Digest(layer), moved: make(chan struct{}), release: make(chan struct{})}
	index, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer index.Close()
	u, err := upstream.New(DefaultHost, up.URL())
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(store, index, []*upstream.Client{u}, WithSpoolDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	defer func() {
		srv.Close()
		p.Close()
	}()
	released := false
	defer func() {
		if !released {
			close(store.release)
		}
	}()
	get := func(want string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v2/library/app/blobs/" + layer)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(body).String() != layer {
			t.Fatalf("GET the layer: %d, %v, %d bytes", resp.StatusCode, err, len(body))
		}
		if got := resp.Header.Get(cacheHeader); got != want {
			t.Errorf("X-Cache %q, want %q", got, want)
		}
	}

	get("miss")
	recv(t, store.moved, "the layer's store")
	if linked, _ := index.Linked(DefaultHost, "library/app", digest.Digest(layer)); linked {
		t.Fatal("the layer is recorded already: the test holds nothing")
	}
	get("hit")
	close(store.release)
	released = true
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := up.Count(http.MethodHead, fixture.KindBlob); n != 0 {
		t.Errorf("%d upstream blob HEADs, want 0", n)
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 1 {
		t.Errorf("%d upstream blob GETs, want 1", n)
	}
	if linked, err := index.Linked(DefaultHost, "library/app", digest.Digest(layer)); err != nil || !linked {
		t.Errorf("the layer is not recorded: %v", err)
	}
}
