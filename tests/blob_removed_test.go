package tests

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// removedAtOpen is a shared store (a bucket, not local files) where
// another replica's collection removes a blob between this replica's stat
// of it and its open: the next Open of the armed digest finds it gone.
type removedAtOpen struct {
	storage.Store // its methods only: no FileOpener, as S3
	mu            sync.Mutex
	armed         digest.Digest
}

func (s *removedAtOpen) arm(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armed = d
}

func (s *removedAtOpen) Open(ctx context.Context, repo string, d digest.Digest, off int64) (io.ReadCloser, error) {
	s.mu.Lock()
	remove := s.armed == d
	if remove {
		s.armed = ""
	}
	s.mu.Unlock()
	if remove {
		if err := s.Store.Delete(ctx, "", d); err != nil {
			return nil, err
		}
	}
	return s.Store.Open(ctx, repo, d, off)
}

// A stored blob removed from a shared store between the mirror's stat of
// it and its open (another replica collected it) is a miss: it is fetched
// again from the upstream and served, not answered with a 500.
func TestBlobRemovedBetweenStatAndOpenIsFetchedAgain(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/gone", "1", 1, 8<<10)
	store := &removedAtOpen{}
	m := servertest.StartWithStore(t, up.URL(), func(*storage.Index) (storage.Store, error) {
		s, err := storage.OpenDriverStore(context.Background(), "inmemory", nil)
		store.Store = s
		return store, err
	})
	wantManifest(t, get(t, m.URL()+"/v2/gone/manifests/1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	layer := img.Layers[0]
	url := m.URL() + "/v2/gone/blobs/" + layer
	if r := get(t, url); r.status != http.StatusOK || r.header.Get("X-Cache") != "hit" {
		t.Fatalf("stored layer: %d, X-Cache %q", r.status, r.header.Get("X-Cache"))
	}
	up.ResetCounts()
	store.arm(digest.Digest(layer))
	r := get(t, url)
	if r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("layer removed between its stat and its open: %d %s", r.status, r.body)
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 1 {
		t.Errorf("%d upstream GETs of the layer, want 1", n)
	}
}
