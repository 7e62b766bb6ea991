package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// collectedBeforeReopen is a store whose first read of a blob breaks
// after cutAfter bytes (a bucket's connection reset), and that plays a
// collection at the next open: it removes the blob if the guard lets it
// claim the blob, as the collector does.
type collectedBeforeReopen struct {
	*storage.DriverStore
	guard     *lifecycle.InUse
	cutAfter  int64
	opens     atomic.Int32
	collected atomic.Bool
}

func (s *collectedBeforeReopen) Open(ctx context.Context, repo string, dgst digest.Digest, off int64) (io.ReadCloser, error) {
	if s.opens.Add(1) > 1 {
		if release, ok := s.guard.Claim(dgst); ok {
			s.collected.Store(true)
			err := s.DriverStore.Delete(ctx, repo, dgst)
			release()
			if err != nil {
				return nil, err
			}
		}
		return s.DriverStore.Open(ctx, repo, dgst, off)
	}
	rc, err := s.DriverStore.Open(ctx, repo, dgst, off)
	if err != nil {
		return nil, err
	}
	return cutAfter(rc, s.cutAfter), nil
}

// A hit read from an object store (S3), whose read breaks mid-body, is
// held from collection and eviction until its answer ends: the object,
// unlike an open file, does not survive its removal, and the read is
// reopened where it broke. It was let go once first opened, so that a
// collection between the break and the reopen removed it and the client's
// download broke.
func TestHitFromStoreHeldUntilItsAnswerEnds(t *testing.T) {
	body := []byte(strings.Repeat("layer bytes ", 30000))
	d := digest.FromBytes(body)
	mem, _ := memStore(t)
	guard := lifecycle.NewInUse()
	store := &collectedBeforeReopen{DriverStore: mem, guard: guard, cutAfter: 100 << 10}
	p, up, _ := testMirror(t, store, "http://127.0.0.1:1", WithContentGuard(guard))
	storeHit(t, p, target{up: up, repo: "library/app", name: "app"}, mem, body)
	resp, got, err := getBlob(t, p, d, "")
	if resp.StatusCode != http.StatusOK || err != nil || !bytes.Equal(got, body) {
		t.Errorf("status %d, %d of %d bytes, err %v (collected during the answer: %v); want the whole blob", resp.StatusCode, len(got), len(body), err, store.collected.Load())
	}
	if n := store.opens.Load(); n != 2 {
		t.Errorf("the blob was opened %d times, want 2 (the read cut, reopened)", n)
	}
}
