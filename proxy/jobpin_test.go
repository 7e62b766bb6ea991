package proxy

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// crashAfterPut is shared records that, once armed, write the first
// record of kind and then hang, as a process killed right after the
// write would: the writer never learns of it and does nothing more.
type crashAfterPut struct {
	storage.Records
	kind    string
	armed   chan struct{} // closed: the next Put of kind crashes
	crashed chan struct{} // closed once it has
	release chan struct{} // closed: the hung Put returns an error
}

func (r *crashAfterPut) Put(ctx context.Context, kind, key string, value []byte) error {
	select {
	case <-r.armed:
	default:
		return r.Records.Put(ctx, kind, key, value)
	}
	if kind != r.kind {
		return r.Records.Put(ctx, kind, key, value)
	}
	if err := r.Records.Put(ctx, kind, key, value); err != nil {
		return err
	}
	close(r.crashed)
	<-r.release
	return errors.New("killed")
}

// A prefetch with pin of an image an admin had pinned, killed as it
// recorded its pin and resumed from what its index held then, whose copy
// fails, leaves the admin's pin. The job had recorded the pin's time
// (pinned_at) first, its pin then replaced the admin's record, and the
// crash came before the job cleared pinned_at: the resumed job found the
// record its own, took it back when the copy failed, and the image the
// admin pinned was pinned no more, on any replica.
func TestPrefetchResumedAfterCrashKeepsAnAdminsPin(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0))) // has no library/app
	up, err := upstream.New(DefaultHost, "http://registry.test", upstream.WithTransport(inProcess{reg}))
	if err != nil {
		t.Fatal(err)
	}
	bucket := storage.NewDriverRecords(inmemory.New())
	records := &crashAfterPut{Records: bucket, kind: "pins", armed: make(chan struct{}), crashed: make(chan struct{}), release: make(chan struct{})}
	open := func(path string, r storage.Records) *Proxy {
		t.Helper()
		store, err := storage.OpenDriverStore(t.Context(), "inmemory", nil)
		if err != nil {
			t.Fatal(err)
		}
		index, err := storage.OpenIndex(path)
		if err != nil {
			t.Fatal(err)
		}
		index.StopWatchingMapped()
		index.ShareRecords(r, nil)
		p, err := New(store, index, []*upstream.Client{up}, WithSpoolDir(t.TempDir()), WithReferrers(false),
			WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Close()
			_ = index.Close()
		})
		return p
	}
	dir := t.TempDir()
	first := open(filepath.Join(dir, "index.db"), records)
	key := storage.TagKey(DefaultHost, "library/app", "v1")
	admin := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "admin"}
	if err := first.index.Pin(t.Context(), key, admin); err != nil {
		t.Fatal(err)
	}

	close(records.armed)
	if _, err := first.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{"library/app:v1"}, Pin: true}, "prefetch"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	select {
	case <-records.crashed:
	case <-ctx.Done():
		t.Fatal("the prefetch never recorded its pin")
	}
	// Killed here: what its index holds is what a restart reads.
	raw, err := os.ReadFile(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "restarted.db"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	defer close(records.release)

	second := open(filepath.Join(dir, "restarted.db"), bucket)
	if err := second.ResumeJobs(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := second.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	jobs, err := second.index.Jobs(1)
	if err != nil || len(jobs) != 1 || jobs[0].State != storage.JobFailed {
		t.Fatalf("the resumed job: %+v, %v; want it failed", jobs, err)
	}
	pins, err := second.index.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pins[key]; !ok {
		t.Errorf("pins %v after the resumed prefetch failed; want the admin's pin of %s kept", pins, key)
	}
	if _, err := bucket.Get(t.Context(), "pins", key); err != nil {
		t.Errorf("the bucket's pin of %s: %v; want the admin's kept", key, err)
	}
}

// A prefetch with pin stopped by a graceful shutdown in the middle of its
// copy keeps its pin: the job stays unfinished, to resume at the next
// start, and its image pinned meanwhile. The copy, cancelled, took the pin
// back as if it had failed: with the mirror stopped the image read as
// unpinned (ls, and on a bucket replicas share, the other replicas, whose
// eviction could remove it during a rolling restart).
func TestPrefetchStoppedByShutdownKeepsItsPin(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	pushImage(t, reg, "library/app:v1", 1)
	reached := make(chan struct{})
	var once sync.Once
	held := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			once.Do(func() { close(reached) })
			<-r.Context().Done() // until the shutdown cancels the copy
			http.Error(w, "cancelled", http.StatusServiceUnavailable)
			return
		}
		reg.ServeHTTP(w, r)
	})
	p := inProcessMirror(t, held)
	job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{"library/app:v1"}, Pin: true}, "prefetch")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the prefetch never fetched a blob")
	}
	p.Close()
	j, ok, err := p.index.Job(job.ID)
	if err != nil || !ok || j.Finished() {
		t.Fatalf("the job after the shutdown: %+v, %v, %v; want it unfinished, to resume", j, ok, err)
	}
	pins, err := p.index.Pins()
	if err != nil {
		t.Fatal(err)
	}
	key := storage.TagKey(DefaultHost, "library/app", "v1")
	if _, ok := pins[key]; !ok {
		t.Errorf("pins %v after a shutdown stopped the prefetch; want %s pinned until the job resumes", pins, key)
	}
}

// failPinWrites is shared records whose writes of pins fail once failing
// is set (a bucket refusing writes for a while).
type failPinWrites struct {
	storage.Records
	failing *atomic.Bool
}

func (r failPinWrites) Put(ctx context.Context, kind, key string, value []byte) error {
	if kind == "pins" && r.failing.Load() {
		return errors.New("bucket refusing writes")
	}
	return r.Records.Put(ctx, kind, key, value)
}

// A prefetch with pin resumed after a restart (its pin made before it,
// its claim to it recorded), whose pin's write to the bucket replicas
// share fails, fails the image and takes back its own pin, as a failed
// copy does. Before, the pin, put back on the replica as it was (its
// own), stayed there and in the bucket, and the job, finished, never
// took it back: an image pinned for good that nobody had asked to keep.
func TestPrefetchResumedWhosePinFailsTakesBackItsPin(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0))) // has no library/app
	up, err := upstream.New(DefaultHost, "http://registry.test", upstream.WithTransport(inProcess{reg}))
	if err != nil {
		t.Fatal(err)
	}
	bucket := storage.NewDriverRecords(inmemory.New())
	var failing atomic.Bool
	store, index := memStore(t)
	index.ShareRecords(failPinWrites{Records: bucket, failing: &failing}, nil)
	p, err := New(store, index, []*upstream.Client{up}, WithSpoolDir(t.TempDir()), WithReferrers(false),
		WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// What a run stopped by a shutdown in its copy left: the job
	// unfinished, its pin made, its claim recorded with it.
	key := storage.TagKey(DefaultHost, "library/app", "v1")
	rec := storage.PinRecord{PinnedAt: time.Unix(1700000000, 0).UTC(), Reason: "prefetch"}
	job := &storage.Job{ID: "20231114T221320-resumed", Trigger: rec.Reason, State: storage.JobRunning, Pin: true,
		Images:    []storage.JobImage{{Image: "library/app:v1", State: storage.JobRunning, PinnedAt: rec.PinnedAt}},
		CreatedAt: rec.PinnedAt, UpdatedAt: rec.PinnedAt}
	if err := index.PutJob(job); err != nil {
		t.Fatal(err)
	}
	if err := index.Pin(t.Context(), key, rec); err != nil {
		t.Fatal(err)
	}

	failing.Store(true)
	if err := p.ResumeJobs(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	j, ok, err := index.Job(job.ID)
	if err != nil || !ok || j.State != storage.JobFailed || !strings.Contains(j.Images[0].Error, "bucket refusing writes") {
		t.Fatalf("the resumed job: %+v, %v, %v; want it failed by its pin", j, ok, err)
	}
	pins, err := index.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := pins[key]; ok {
		t.Errorf("pin of %s after the resumed prefetch failed: %+v; want the job's own taken back", key, got)
	}
	if raw, err := bucket.Get(t.Context(), "pins", key); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the bucket's pin of %s after the resumed prefetch failed: %q, %v; want none", key, raw, err)
	}
}

// A prefetch with pin whose copy fails by its idle timeout (the upstream
// silent for longer than a fill's time) takes back its pin, though the
// copy's context is done then. Before, the pins' lock, waited for on that
// context, could refuse the taking back: the image's pin stayed for good.
func TestPrefetchTimedOutTakesBackItsPin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		pushImage(t, reg, "library/app:1", 1)
		silent := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/1") {
				time.Sleep(2 * time.Hour) // longer than a fill's hour
			}
			reg.ServeHTTP(w, r)
		})
		p := inProcessMirror(t, silent, WithFillTimeout(time.Hour))
		defer p.Close()
		job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{"app:1"}, Pin: true}, "prefetch")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Hour) // the bubble's clock
		synctest.Wait()
		got, err := p.Job(job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != storage.JobFailed {
			t.Fatalf("job %s after its copy's idle timeout; images: %+v", got.State, got.Images)
		}
		pins, err := p.index.Pins()
		if err != nil {
			t.Fatal(err)
		}
		if len(pins) != 0 {
			t.Errorf("pins %v after the prefetch timed out; want its own taken back", pins)
		}
	})
}
