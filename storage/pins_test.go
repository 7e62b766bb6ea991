package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/docker-mirror/docker-mirror/storage"
)

// pinRecords is records whose writes of pins call put first, and whose
// deletes of pins del first if set: a test holds one there, or fails it.
type pinRecords struct {
	storage.Records
	put, del func() error
}

func (r pinRecords) Put(ctx context.Context, kind, key string, value []byte) error {
	if kind == "pins" {
		if err := r.put(); err != nil {
			return err
		}
	}
	return r.Records.Put(ctx, kind, key, value)
}

func (r pinRecords) Delete(ctx context.Context, kind, key string) error {
	if kind == "pins" && r.del != nil {
		if err := r.del(); err != nil {
			return err
		}
	}
	return r.Records.Delete(ctx, kind, key)
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
			added, err := ix.PinAdded(t.Context(), key, prefetch)
			if err == nil && !added {
				err = errors.New("PinAdded said the pin was not new")
			}
			pinned <- err
		}()
		<-reached // recorded here, its bucket write held
		unpinned := make(chan error, 1)
		go func() { unpinned <- ix.Unpin(t.Context(), key) }() // the admin's
		synctest.Wait()                                        // the unpin is done, or waits
		close(release)
		if err := <-pinned; err != nil {
			t.Fatal(err)
		}
		if err := <-unpinned; err != nil {
			t.Fatal(err)
		}
		if _, err := ix.UnpinIf(t.Context(), key, prefetch); err != nil { // the prefetch's copy failed
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
	must(t, ix.Pin(t.Context(), key, admin))
	fail = true
	for _, ref := range []string{key, other} {
		if _, err := ix.PinAdded(t.Context(), ref, prefetch); !errors.Is(err, down) {
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

// An unpin (an admin's, or a failed prefetch's UnpinIf) whose delete from
// the bucket replicas share fails is not taken here either: the caller is
// told it failed, the pin stays here as in the bucket, and the unpin made
// again once the bucket answers takes it from both. Before, the pin was
// gone here, its image open to eviction, while the bucket kept it for the
// next Refresh to read back onto every replica; and the prefetch's
// UnpinIf made again found nothing of its own here: its pin stayed for
// good.
func TestUnpinWhoseBucketDeleteFailsIsNotTaken(t *testing.T) {
	down := errors.New("bucket unreachable")
	var fail bool
	inner := storage.NewDriverRecords(inmemory.New())
	ix := openShared(t, pinRecords{Records: inner, put: func() error { return nil }, del: func() error {
		if fail {
			return down
		}
		return nil
	}})
	key := storage.TagKey("docker.io", "library/x", "v1")
	other := storage.TagKey("docker.io", "library/y", "v1")
	admin := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "admin"}
	prefetch := storage.PinRecord{PinnedAt: admin.PinnedAt.Add(time.Second), Reason: "prefetch"}
	must(t, ix.Pin(t.Context(), key, admin))
	must(t, ix.Pin(t.Context(), other, prefetch))
	fail = true
	if err := ix.Unpin(t.Context(), key); !errors.Is(err, down) {
		t.Errorf("Unpin with the bucket's delete failing: %v, want %v", err, down)
	}
	if removed, err := ix.UnpinIf(t.Context(), other, prefetch); removed || !errors.Is(err, down) {
		t.Errorf("UnpinIf with the bucket's delete failing: %v %v, want false %v", removed, err, down)
	}
	pins, err := ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]storage.PinRecord{key: admin, other: prefetch} {
		if got, ok := pins[ref]; !ok || !got.PinnedAt.Equal(want.PinnedAt) || got.Reason != want.Reason {
			t.Errorf("pin of %s after a failed unpin: %+v %v, want %+v as the bucket keeps it", ref, got, ok, want)
		}
	}
	fail = false
	must(t, ix.Unpin(t.Context(), key))
	if removed, err := ix.UnpinIf(t.Context(), other, prefetch); !removed || err != nil {
		t.Fatalf("UnpinIf made again, the bucket back: %v %v, want it removed", removed, err)
	}
	pins, err = ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{key, other} {
		raw, err := inner.Get(t.Context(), "pins", ref)
		if _, here := pins[ref]; here || !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s unpinned again, the bucket back: pinned here %v; the bucket's record %q, %v; want no pin anywhere", ref, here, raw, err)
		}
	}
}

// landedRecords is records whose writes of pins land and then fail, as a
// write whose answer timed out after the bucket stored it.
type landedRecords struct {
	storage.Records
	err error
}

func (r landedRecords) Put(ctx context.Context, kind, key string, value []byte) error {
	if err := r.Records.Put(ctx, kind, key, value); err != nil || kind != "pins" {
		return err
	}
	return r.err
}

// A pin whose write to the bucket replicas share failed but landed (its
// answer lost after the bucket stored it) is a pin: the replica keeps it
// and says so, as every replica reads it from the bucket. Before, it was
// reported failed and taken back here only: the next Refresh read it back
// onto every replica, and a job told its pin failed found nothing of its
// own to take back (UnpinIf), leaving the pin in the bucket for good.
func TestPinWhoseBucketWriteLandedIsKept(t *testing.T) {
	inner := storage.NewDriverRecords(inmemory.New())
	ix := openShared(t, landedRecords{Records: inner, err: errors.New("answer timed out")})
	key := storage.TagKey("docker.io", "library/x", "v1")
	prefetch := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "prefetch"}
	added, err := ix.PinAdded(t.Context(), key, prefetch)
	if err != nil || !added {
		t.Fatalf("PinAdded with the bucket's write landed, its answer lost: %v %v, want true <nil>", added, err)
	}
	pins, err := ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := pins[key]; !ok || !got.PinnedAt.Equal(prefetch.PinnedAt) {
		t.Fatalf("pin of %s here: %+v %v, want %+v as the bucket holds it", key, got, ok, prefetch)
	}
	if removed, err := ix.UnpinIf(t.Context(), key, prefetch); !removed || err != nil {
		t.Fatalf("the prefetch taking back its pin: %v %v, want it removed", removed, err)
	}
	if raw, err := inner.Get(t.Context(), "pins", key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the bucket's record after the pin was taken back: %q, %v; want none", raw, err)
	}
}

// A pin or unpin waiting for another whose bucket call hangs gives up
// when its own context is done (the admin's request gone, a job
// cancelled), saying why. Before, it waited for the hanging call: a
// bucket that did not answer held every pin and unpin of the replica,
// and the admin requests making them, for as long as it hung.
func TestPinWaitingForAHangingBucketHonoursItsContext(t *testing.T) {
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ix := openShared(t, pinRecords{Records: storage.NewDriverRecords(inmemory.New()), put: func() error {
		once.Do(func() {
			close(reached)
			<-release
		})
		return nil
	}})
	key := storage.TagKey("docker.io", "library/x", "v1")
	other := storage.TagKey("docker.io", "library/y", "v1")
	admin := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "admin"}
	hung := make(chan error, 1)
	go func() { hung <- ix.Pin(context.Background(), key, admin) }()
	<-reached // holds the pins' lock, its bucket write hanging
	defer func() {
		close(release)
		if err := <-hung; err != nil {
			t.Error(err)
		}
	}()
	gone, cancel := context.WithCancel(t.Context())
	cancel() // the request waiting has gone
	for name, call := range map[string]func() error{
		"Pin":   func() error { return ix.Pin(gone, other, admin) },
		"Unpin": func() error { return ix.Unpin(gone, other) },
		"UnpinIf": func() error {
			_, err := ix.UnpinIf(gone, other, admin)
			return err
		},
	} {
		done := make(chan error, 1)
		go func() { done <- call() }()
		watchdog, stop := context.WithTimeout(t.Context(), 10*time.Second)
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s with its context done, waiting for a hanging bucket call: %v, want %v", name, err, context.Canceled)
			}
		case <-watchdog.Done():
			t.Errorf("%s with its context done still waits for a hanging bucket call", name)
		}
		stop()
	}
}

// walkHeld is records whose walk of the pins, having read them all, calls
// held before it returns: a test holds a Refresh there.
type walkHeld struct {
	storage.Records
	held func()
}

func (r walkHeld) Walk(ctx context.Context, kind string, fn func(key string, value []byte) error) error {
	err := r.Records.Walk(ctx, kind, fn)
	if kind == "pins" {
		r.held()
	}
	return err
}

// An unpin on a replica while its Refresh is reading the bucket's pins is
// not undone by the Refresh: the image stays unpinned. Before, the
// Refresh wrote back the pin it had read before the unpin: the image
// pinned again here, the bucket without the pin, until the next Refresh.
func TestUnpinDuringARefreshStaysUnpinned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reached, release := make(chan struct{}), make(chan struct{})
		var hold bool
		ix := openShared(t, walkHeld{Records: storage.NewDriverRecords(inmemory.New()), held: func() {
			if hold {
				close(reached)
				<-release
			}
		}})
		key := storage.TagKey("docker.io", "library/x", "v1")
		must(t, ix.Pin(t.Context(), key, storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "admin"}))
		hold = true
		refreshed := make(chan error, 1)
		go func() { refreshed <- ix.Refresh(t.Context()) }()
		<-reached // the bucket's pins read, the pin among them
		unpinned := make(chan error, 1)
		go func() { unpinned <- ix.Unpin(t.Context(), key) }()
		synctest.Wait() // the unpin is done, or waits
		close(release)
		if err := <-refreshed; err != nil {
			t.Fatal(err)
		}
		if err := <-unpinned; err != nil {
			t.Fatal(err)
		}
		wantNoPin(t, ix, key, "after an unpin during a Refresh")
	})
}

// getHeld is records whose reads of pins, having read one, call held
// before they return: a test holds a recheck there.
type getHeld struct {
	storage.Records
	held func()
}

func (r getHeld) Get(ctx context.Context, kind, key string) ([]byte, error) {
	raw, err := r.Records.Get(ctx, kind, key)
	if kind == "pins" {
		r.held()
	}
	return raw, err
}

// An unpin on a replica while its eviction rechecks the bucket for pins
// another replica made (RecheckPins) is not undone by the recheck. Before,
// the recheck adopted the pin it had read before the unpin removed it from
// the bucket: the image pinned again on this replica, in the bucket no
// longer, until a Refresh pruned it.
func TestUnpinDuringAPinRecheckStaysUnpinned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := storage.NewDriverRecords(inmemory.New())
		reached, release := make(chan struct{}), make(chan struct{})
		var hold bool
		a := openShared(t, inner)
		b := openShared(t, getHeld{Records: inner, held: func() {
			if hold {
				close(reached)
				<-release
			}
		}})
		key := storage.TagKey("docker.io", "library/x", "v1")
		must(t, a.Pin(t.Context(), key, storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "admin"}))
		hold = true
		rechecked := make(chan error, 1)
		go func() {
			_, err := b.RecheckPins(t.Context(), []string{key})
			rechecked <- err
		}()
		<-reached // b's eviction has read a's pin from the bucket
		hold = false
		unpinned := make(chan error, 1)
		go func() { unpinned <- b.Unpin(t.Context(), key) }() // an admin's, on b
		synctest.Wait()                                       // the unpin is done, or waits
		close(release)
		if err := <-rechecked; err != nil {
			t.Fatal(err)
		}
		if err := <-unpinned; err != nil {
			t.Fatal(err)
		}
		wantNoPin(t, b, key, "on b after its unpin during b's recheck")
	})
}

// walkHung is records whose walk of the pins hangs, as a bucket that does
// not answer, until its context is done; reached is closed once it hangs.
type walkHung struct {
	storage.Records
	reached chan struct{}
}

func (r walkHung) Walk(ctx context.Context, kind string, fn func(key string, value []byte) error) error {
	if kind != "pins" {
		return r.Records.Walk(ctx, kind, fn)
	}
	close(r.reached)
	<-ctx.Done()
	return ctx.Err()
}

// A Refresh whose listing of the bucket's pins hangs (a bucket that does
// not answer; the collector's context has no deadline) holds the pins and
// unpins of the replica no longer than a hanging bucket call of theirs
// would: it gives up after the bound of one, and a job's taking back of
// its pin (on a context not cancelled) goes through. Before, the listing,
// made under the pins' lock, hung for as long as the bucket did, and every
// pin and unpin of the replica with it: a job's taking back for ever.
func TestPinsNotHeldByARefreshOfAHangingBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := storage.NewDriverRecords(inmemory.New())
		hung := walkHung{Records: inner, reached: make(chan struct{})}
		ix := openShared(t, hung)
		key := storage.TagKey("docker.io", "library/x", "v1")
		prefetch := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "prefetch"}
		must(t, ix.Pin(t.Context(), key, prefetch))
		refreshing, stop := context.WithCancel(context.Background()) // the collector's: no deadline
		defer stop()
		refreshed := make(chan error, 1)
		go func() { refreshed <- ix.Refresh(refreshing) }()
		<-hung.reached
		takeBackWithin(t, ix, key, prefetch, time.Hour, stop, "a Refresh whose listing of the pins hangs")
		<-refreshed
	})
}

// readBackFails is landedRecords whose read of a pin after its write
// fails, as a bucket whose answers are lost for a moment.
type readBackFails struct {
	landedRecords
	written bool
}

func (r *readBackFails) Put(ctx context.Context, kind, key string, value []byte) error {
	err := r.landedRecords.Put(ctx, kind, key, value)
	r.written = r.written || kind == "pins"
	return err
}

func (r *readBackFails) Get(ctx context.Context, kind, key string) ([]byte, error) {
	if kind == "pins" && r.written {
		r.written = false
		return nil, errors.New("read timed out")
	}
	return r.Records.Get(ctx, kind, key)
}

// A job's pin whose bucket write failed but landed, and whose read back
// failed too, is reported failed: the job, taking back its pin, removes
// it from the bucket, where it is. Before, the pin, put back here as it
// was (none), was not the job's to take back (UnpinIf found no record of
// its own here), and the bucket kept it for good: every replica read it
// back with its next Refresh.
func TestPinLandedUnreadTakenBack(t *testing.T) {
	inner := storage.NewDriverRecords(inmemory.New())
	ix := openShared(t, &readBackFails{landedRecords: landedRecords{Records: inner, err: errors.New("answer timed out")}})
	key := storage.TagKey("docker.io", "library/x", "v1")
	prefetch := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "prefetch"}
	if _, err := ix.PinAdded(t.Context(), key, prefetch); err == nil {
		t.Fatal("PinAdded with the bucket's write and read back failing: no error")
	}
	if removed, err := ix.UnpinIf(t.Context(), key, prefetch); err != nil {
		t.Fatalf("the prefetch taking back its pin: %v %v", removed, err)
	}
	pins, err := ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := inner.Get(t.Context(), "pins", key)
	if _, here := pins[key]; here || !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("after the prefetch took back its pin: pinned here %v; the bucket's record %q, %v; want no pin anywhere", here, raw, err)
	}
}

// getHung is records whose reads of the pins of keys hang, as a bucket
// that does not answer, until their context is done; reached is closed at
// the first.
type getHung struct {
	storage.Records
	keys    map[string]bool
	reached chan struct{}
	once    *sync.Once
}

func (r getHung) Get(ctx context.Context, kind, key string) ([]byte, error) {
	if kind != "pins" || !r.keys[key] {
		return r.Records.Get(ctx, kind, key)
	}
	r.once.Do(func() { close(r.reached) })
	<-ctx.Done()
	return nil, ctx.Err()
}

// An eviction's recheck of the bucket for the pins of many victims
// (RecheckPins, under the pins' lock) holds the pins and unpins of the
// replica no longer than a pin's own bucket calls would (a minute: a read
// and a write) when the bucket hangs: its first read to give up ends the
// others. Before, every read waited out its own 30 s, eight at once: an
// eviction of 40 victims held a job's taking back of its pin for 150 s,
// of thousands for hours.
func TestPinsNotHeldByARecheckOfAHangingBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := storage.NewDriverRecords(inmemory.New())
		hung := getHung{Records: inner, keys: map[string]bool{}, reached: make(chan struct{}), once: new(sync.Once)}
		ix := openShared(t, hung)
		var refs []string
		for i := range 40 {
			refs = append(refs, storage.TagKey("docker.io", "library/x", fmt.Sprintf("v%d", i)))
			hung.keys[refs[i]] = true
		}
		key := storage.TagKey("docker.io", "library/y", "v1")
		prefetch := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "prefetch"}
		must(t, ix.Pin(t.Context(), key, prefetch))
		evicting, stop := context.WithCancel(context.Background()) // the collector's: no deadline
		defer stop()
		rechecked := make(chan error, 1)
		go func() {
			_, err := ix.RecheckPins(evicting, refs)
			rechecked <- err
		}()
		<-hung.reached
		takeBackWithin(t, ix, key, prefetch, time.Minute, stop, "an eviction's recheck of the pins of a hanging bucket")
		<-rechecked
	})
}

// wantNoPin fails t if ix holds a pin of key (when says after what).
func wantNoPin(t *testing.T, ix *storage.Index, key, when string) {
	t.Helper()
	pins, err := ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := pins[key]; ok {
		t.Errorf("pin of %s %s: %+v; want none, as in the bucket", key, when, got)
	}
}

// takeBackWithin is a job taking back its pin rec of key, on a context not
// cancelled, as a failed copy does (UnpinIf), in a synctest bubble: it
// fails t unless the pin is removed within bound of the bubble's clock,
// held behind what (which stop ends).
func takeBackWithin(t *testing.T, ix *storage.Index, key string, rec storage.PinRecord, bound time.Duration, stop func(), what string) {
	t.Helper()
	taken := make(chan error, 1)
	go func() {
		removed, err := ix.UnpinIf(context.WithoutCancel(t.Context()), key, rec)
		if err == nil && !removed {
			err = errors.New("UnpinIf did not remove the job's pin")
		}
		taken <- err
	}()
	select {
	case err := <-taken:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(bound): // the bubble's clock: once everything else waits
		t.Errorf("a job taking back its pin still waits, %v on, for %s", bound, what)
		stop()
		<-taken
	}
	stop()
}
