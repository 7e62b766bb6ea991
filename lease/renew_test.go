package lease_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker-mirror/docker-mirror/lease"
)

// memObjects are lease objects in memory (a synctest bubble's clock moves
// only while nothing waits on a socket), whose writes fail, as S3's 503
// SlowDown, until throttledUntil.
type memObjects struct {
	mu             sync.Mutex
	objects        map[string][]byte
	throttledUntil time.Time
}

var errSlowDown = fmt.Errorf("SlowDown: Please reduce your request rate. (503)")

func memEtag(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b))[:32] }

func (m *memObjects) write(key, etag string, body []byte, create bool) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Now().Before(m.throttledUntil) {
		return "", errSlowDown
	}
	cur, ok := m.objects[key]
	switch {
	case create && ok:
		return "", lease.ErrExists
	case !create && (!ok || memEtag(cur) != etag):
		return "", lease.ErrChanged
	}
	m.objects[key] = body
	return memEtag(body), nil
}

func (m *memObjects) Create(_ context.Context, key string, body []byte) (string, error) {
	return m.write(key, "", body, true)
}

func (m *memObjects) Replace(_ context.Context, key, etag string, body []byte) (string, error) {
	return m.write(key, etag, body, false)
}

func (m *memObjects) Get(_ context.Context, key string) ([]byte, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.objects[key]
	if !ok {
		return nil, "", lease.ErrNotFound
	}
	return b, memEtag(b), nil
}

func (m *memObjects) Delete(ctx context.Context, key string) error { return m.DeleteIf(ctx, key, "") }

func (m *memObjects) DeleteIf(_ context.Context, key, etag string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.objects[key]; ok && etag != "" && memEtag(b) != etag {
		return lease.ErrChanged
	}
	delete(m.objects, key)
	return nil
}

func (m *memObjects) List(context.Context, string) ([]string, error) { return nil, nil }

// A holder whose renewals the store refused for 80 seconds (S3
// throttling its writes, 503 SlowDown) renews its lease as soon as the
// store takes writes again. It tried again only a third of the lease's
// life later (40 seconds), with two renewals missed: at the lease's last
// moment, when a replica waiting on it since it was written took it
// over and fetched the blob a second time.
func TestLeaseRenewedSoonAfterFailedRenewals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		objs := &memObjects{objects: map[string][]byte{}}
		a := lease.New(objs, "http://a")
		h, _, _, err := a.Take(ctx, "sha256:1")
		if err != nil || h == nil {
			t.Fatalf("a: %v, %v", h, err)
		}
		defer h.Release()
		_, written, _ := objs.Get(ctx, "records/leases/sha256/1")
		objs.mu.Lock()
		objs.throttledUntil = time.Now().Add(100 * time.Second) // the renewals at 40 s and 80 s fail
		objs.mu.Unlock()
		time.Sleep(110 * time.Second)
		synctest.Wait()
		if _, etag, err := objs.Get(ctx, "records/leases/sha256/1"); err != nil || etag == written {
			t.Fatalf("the lease 10 s after the store took writes again, 10 s before its expiry: %v, renewed %v; want renewed", err, etag != written)
		}
	})
}

// lostAnswer are lease objects whose first renewal is written but
// answered as refused: its answer lost (a connection reset), the S3
// client sent it again, and the store refused the repeat with 412, the
// ETag changed by the first.
type lostAnswer struct {
	*memObjects
	once sync.Once
}

func (l *lostAnswer) Replace(ctx context.Context, key, etag string, body []byte) (string, error) {
	cur, err := l.memObjects.Replace(ctx, key, etag, body)
	lost := false
	l.once.Do(func() { lost = err == nil })
	if lost {
		return "", lease.ErrChanged
	}
	return cur, err
}

// A renewal written whose answer was lost, and refused when sent again
// (the ETag changed by itself), keeps the lease: it was taken for lost to
// another replica, never renewed again, and taken over at its expiry by a
// replica waiting on it, which fetched the blob a second time.
func TestLeaseKeptAfterARenewalWrittenButRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		objs := &lostAnswer{memObjects: &memObjects{objects: map[string][]byte{}}}
		a := lease.New(objs, "http://a")
		h, _, _, err := a.Take(ctx, "sha256:1")
		if err != nil || h == nil {
			t.Fatalf("a: %v, %v", h, err)
		}
		defer h.Release()
		time.Sleep(41 * time.Second) // the first renewal, its answer lost
		synctest.Wait()
		_, first, _ := objs.Get(ctx, "records/leases/sha256/1")
		time.Sleep(40 * time.Second)
		synctest.Wait()
		if _, etag, err := objs.Get(ctx, "records/leases/sha256/1"); err != nil || etag == first {
			t.Fatalf("the lease 40 s after a renewal written whose answer was lost: %v, renewed %v; want renewed", err, etag != first)
		}
	})
}

// failedAfterWrite are lease objects whose first renewal is written but
// fails all the same: its answer never came (a timeout).
type failedAfterWrite struct {
	*memObjects
	once    sync.Once
	written chan struct{}
}

var errNoAnswer = fmt.Errorf("RequestError: send request failed: context deadline exceeded")

func (f *failedAfterWrite) Replace(ctx context.Context, key, etag string, body []byte) (string, error) {
	cur, err := f.memObjects.Replace(ctx, key, etag, body)
	lost := false
	f.once.Do(func() { lost = err == nil })
	if lost {
		close(f.written)
		return "", errNoAnswer
	}
	return cur, err
}

// A lease released (its fetch failed) after a renewal written whose
// answer never came is deleted, so that a replica waiting on it takes it
// at once: it was left, taken for another replica's, and the waiting
// replica's client waited out its expiry, two minutes.
func TestLeaseReleasedAfterARenewalWrittenUnanswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		objs := &failedAfterWrite{memObjects: &memObjects{objects: map[string][]byte{}}, written: make(chan struct{})}
		a := lease.New(objs, "http://a")
		h, _, _, err := a.Take(ctx, "sha256:1")
		if err != nil || h == nil {
			t.Fatalf("a: %v, %v", h, err)
		}
		<-objs.written // the renewal at 40 s, before its retry a second later
		synctest.Wait()
		h.Release()
		if _, _, err := objs.Get(ctx, "records/leases/sha256/1"); err != lease.ErrNotFound {
			t.Fatalf("the lease after its release: %v; want it deleted", err)
		}
	})
}
