package proxy

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// gatedStatStore is a store whose Stat of one digest waits for a gate, as
// a slow destination registry's HEAD would.
type gatedStatStore struct {
	storage.Store
	slow    digest.Digest
	entered chan struct{}
	release chan struct{}
}

func (s *gatedStatStore) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	if dgst == s.slow {
		close(s.entered)
		select {
		case <-s.release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return s.Store.Stat(ctx, repo, dgst)
}

// A blob miss does not wait for another blob's store lookup: the downloads
// table is not locked across the store's network round trip.
func TestSlowStoreStatDoesNotStallOtherMisses(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // fail, not hang, on a regression
	defer cancel()
	mem, err := storage.OpenDriverStore(ctx, "inmemory", nil)
	if err != nil {
		t.Fatal(err)
	}
	index, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer index.Close()
	slow, other := digest.FromString("slow"), digest.FromString("other")
	store := &gatedStatStore{Store: mem, slow: slow, entered: make(chan struct{}), release: make(chan struct{})}
	up, err := upstream.New(DefaultHost, "http://127.0.0.1:1") // refuses: the downloads fail, which is fine here
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(store, index, []*upstream.Client{up}, WithSpoolDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tg := target{up: up, repo: "library/x", name: "x"}

	slowDone := make(chan error, 1)
	go func() {
		_, leave, _, err := p.startBlob(ctx, tg, slow, blobWant{size: -1})
		if leave != nil {
			defer leave()
		}
		slowDone <- err
	}()
	select {
	case <-store.entered:
	case <-ctx.Done():
		t.Fatal("the slow Stat was never called")
	}
	otherDone := make(chan error, 1)
	go func() {
		_, leave, _, err := p.startBlob(ctx, tg, other, blobWant{size: -1})
		if leave != nil {
			defer leave()
		}
		otherDone <- err
	}()
	select {
	case err := <-otherDone:
		if err != nil {
			t.Fatalf("other blob: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("a miss waited for another blob's Stat")
	}
	close(store.release)
	if err := <-slowDone; err != nil {
		t.Fatalf("slow blob: %v", err)
	}
}
