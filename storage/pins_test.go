package storage_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/docker-mirror/docker-mirror/storage"
)

// pinRecords is records whose writes of pins call put first: a test holds
// one there, or fails it.
type pinRecords struct {
	storage.Records
	put func() error
}

func (r pinRecords) Put(ctx context.Context, kind, key string, value []byte) error {
	if kind == "pins" {
		if err := r.put(); err != nil {
			return err
		}
	}
	return r.Records.Put(ctx, kind, key, value)
}

// An admin's unpin that comes while a prefetch's pin is being written to
// the bucket replicas share (recorded here, not there yet) unpins the
// image here and there; the prefetch's copy failing after, its UnpinIf
// finds nothing of its own. Before, the pin's bucket write landed after
// the unpin's delete: the bucket kept a pin this index no longer had,
// which the prefetch's UnpinIf did not take back (not its record here)
// and every replica read back: an image pinned for good that was never
// stored, which nobody had pinned.
func TestUnpinDuringAPinsBucketWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := storage.NewDriverRecords(inmemory.New())
		reached, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		ix := openShared(t, pinRecords{Records: inner, put: func() error {
			once.Do(func() {
				close(reached)
				<-release
			})
			return nil
		}})
		key := storage.TagKey("docker.io", "library/x", "v1")
		prefetch := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "prefetch"}
		pinned := make(chan error, 1)
		go func() {
			added, err := ix.PinAdded(key, prefetch)
			if err == nil && !added {
				err = errors.New("PinAdded said the pin was not new")
			}
			pinned <- err
		}()
		<-reached // recorded here, its bucket write held
		unpinned := make(chan error, 1)
		go func() { unpinned <- ix.Unpin(key) }() // the admin's
		synctest.Wait()                           // the unpin is done, or waits
		close(release)
		if err := <-pinned; err != nil {
			t.Fatal(err)
		}
		if err := <-unpinned; err != nil {
			t.Fatal(err)
		}
		if _, err := ix.UnpinIf(key, prefetch); err != nil { // the prefetch's copy failed
			t.Fatal(err)
		}
		pins, err := ix.Pins()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := inner.Get(t.Context(), "pins", key)
		if _, here := pins[key]; here || !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("after an admin's unpin and the prefetch's failure: pinned here %v; the bucket's record %q, %v; want no pin anywhere", here, raw, err)
		}
	})
}

// A pin whose write to the bucket replicas share fails is not left
// recorded here: the caller is told it failed, and the image is as it
// was, unpinned or pinned by the record before. Before, the pin stayed
// here, keeping the image from eviction, until a Refresh pruned it (or,
// a job's pin, for good on an index that shares no refresh).
func TestPinWhoseBucketWriteFailsIsNotKept(t *testing.T) {
	down := errors.New("bucket unreachable")
	var fail bool
	ix := openShared(t, pinRecords{Records: storage.NewDriverRecords(inmemory.New()), put: func() error {
		if fail {
			return down
		}
		return nil
	}})
	key := storage.TagKey("docker.io", "library/x", "v1")
	admin := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "admin"}
	prefetch := storage.PinRecord{PinnedAt: admin.PinnedAt.Add(time.Second), Reason: "prefetch"}
	other := storage.TagKey("docker.io", "library/y", "v1")
	must(t, ix.Pin(key, admin))
	fail = true
	for _, ref := range []string{key, other} {
		if _, err := ix.PinAdded(ref, prefetch); !errors.Is(err, down) {
			t.Fatalf("PinAdded(%s) with the bucket's write failing: %v, want %v", ref, err, down)
		}
	}
	pins, err := ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := pins[key]; !ok || !got.PinnedAt.Equal(admin.PinnedAt) || got.Reason != admin.Reason {
		t.Errorf("pin of %s after a failed pin: %+v %v, want the admin's %+v", key, got, ok, admin)
	}
	if got, ok := pins[other]; ok {
		t.Errorf("pin of %s after a failed pin: %+v, want none", other, got)
	}
}
