package storage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/service/s3"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
)

// The conformance suite on a real S3 server (versitygw; skipped without
// it): every subtest gets a bucket of its own, and whatever it did, the
// bucket holds nothing but committed content afterwards (no temporary
// objects, no uploads prefix).
func TestDriverStoreS3(t *testing.T) {
	srv := s3test.Start(t)
	storetest.Run(t, func(t *testing.T) storage.Store {
		bucket := srv.NewBucket(t)
		t.Cleanup(func() {
			for _, k := range srv.Keys(t, bucket) {
				if !strings.HasPrefix(k, "blobs/") || !strings.HasSuffix(k, "/data") {
					t.Errorf("bucket holds %q: only committed content expected", k)
				}
			}
		})
		s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket))
		if err != nil {
			t.Fatalf("OpenDriverStore(s3aws): %v", err)
		}
		return s
	})
}

// blockingReader yields its bytes, then blocks until release is closed and
// fails: a write stopped half way, as a crash stops it.
type blockingReader struct {
	r        io.Reader
	reached  chan struct{}
	release  chan struct{}
	signaled bool
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		if !b.signaled {
			b.signaled = true
			close(b.reached)
		}
		<-b.release
		return 0, errors.New("writer died")
	}
	return n, err
}

// On S3 a write goes to its final key only once verified: half way through
// a write larger than one multipart part, the bucket holds no object at all
// (not at the final key, not under a temporary prefix), and a start of
// another store on the bucket deletes nothing (no shared prefix is wiped).
func TestDriverStoreS3WriteInvisibleUntilVerified(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	whole := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB: more than one part
	d := digest.FromBytes(whole)
	// Stopped after exactly one part (the driver's default chunk size),
	// which the driver has uploaded by then.
	br := &blockingReader{r: bytes.NewReader(whole[:10<<20]), reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- s.Put(t.Context(), "r", d, int64(len(whole)), br) }()
	<-br.reached
	if keys := srv.Keys(t, bucket); len(keys) != 0 {
		t.Errorf("half way through a write the bucket holds %v; want nothing", keys)
	}
	if _, err := s.Stat(t.Context(), "r", d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat during the write = %v; want ErrNotFound", err)
	}
	// A second replica starting on the bucket meanwhile.
	other, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	close(br.release)
	if err := <-done; err == nil {
		t.Fatal("Put of a failed read succeeded")
	}
	if keys := srv.Keys(t, bucket); len(keys) != 0 {
		t.Errorf("after a failed write the bucket holds %v; want nothing", keys)
	}
	// The other replica writes it (a driver of its own: the first one's
	// part buffer is never reused while its transport may hold it).
	if err := other.Put(t.Context(), "r", d, int64(len(whole)), bytes.NewReader(whole)); err != nil {
		t.Fatal(err)
	}
	if keys := srv.Keys(t, bucket); len(keys) != 1 || keys[0] != "blobs/sha256/"+d.Encoded()[:2]+"/"+d.Encoded()+"/data" {
		t.Errorf("after the write the bucket holds %v; want the blob only", keys)
	}
}

// recordingDriver notes the paths written and the moves made through a
// storage driver.
type recordingDriver struct {
	storagedriver.StorageDriver
	mu      sync.Mutex
	written []string
	moves   int
}

func (d *recordingDriver) Writer(ctx context.Context, path string, appendMode bool) (storagedriver.FileWriter, error) {
	d.mu.Lock()
	d.written = append(d.written, path)
	d.mu.Unlock()
	return d.StorageDriver.Writer(ctx, path, appendMode)
}

func (d *recordingDriver) Move(ctx context.Context, from, to string) error {
	d.mu.Lock()
	d.moves++
	d.mu.Unlock()
	return d.StorageDriver.Move(ctx, from, to)
}

// On S3 content is written at its final key, never elsewhere, and never
// moved (a Move on S3 is a server-side copy and a delete).
func TestDriverStoreS3WritesInPlace(t *testing.T) {
	srv := s3test.Start(t)
	d, err := factory.Create(t.Context(), "s3aws", srv.Params(srv.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingDriver{StorageDriver: d}
	s := storage.NewDriverStore(rec)
	if !s.Shared() {
		t.Fatal("a store on S3 is not shared")
	}
	b := []byte("some content")
	dg := digest.FromBytes(b)
	if err := s.Put(t.Context(), "r", dg, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	want := "/blobs/sha256/" + dg.Encoded()[:2] + "/" + dg.Encoded() + "/data"
	if len(rec.written) != 1 || rec.written[0] != want || rec.moves != 0 {
		t.Errorf("Put wrote %v and moved %d times; want one write at %s, no move", rec.written, rec.moves, want)
	}
}

// Opening a store on a shared bucket deletes nothing: another replica's
// writes in progress (or anything else under the mirror's scratch prefix)
// stay.
func TestOpenDriverStoreS3WipesNothing(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	d, err := factory.Create(t.Context(), "s3aws", srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.PutContent(t.Context(), "/"+storage.OwnDir+"/uploads/other-replica", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Params(bucket)); err != nil {
		t.Fatal(err)
	}
	if keys := srv.Keys(t, bucket); len(keys) != 1 {
		t.Errorf("after a start the bucket holds %v; want the other replica's object", keys)
	}
}

// failComplete is an S3 endpoint in front of a real one that fails each
// CompleteMultipartUpload (a POST naming an uploadId) with a 500, the
// first one only once release is closed; reached is closed when that one
// arrives.
type failComplete struct {
	next             http.Handler
	reached, release chan struct{}
	once             sync.Once
}

func (f *failComplete) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Query().Has("uploadId") {
		_, _ = io.Copy(io.Discard, r.Body)
		f.once.Do(func() {
			close(f.reached)
			<-f.release
		})
		s3test.WriteError(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
		return
	}
	f.next.ServeHTTP(w, r)
}

// A write whose context ends while S3 completes its upload (a fill that
// reaches its timeout at its very end), and whose completion then fails,
// leaves no incomplete multipart upload behind: its parts would be billed
// until a lifecycle rule aborts them, or for ever without one.
func TestDriverStoreS3CommitCutLeavesNoUpload(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	fail := &failComplete{next: srv.Next(), reached: make(chan struct{}), release: make(chan struct{})}
	s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Front(t, bucket, fail))
	if err != nil {
		t.Fatal(err)
	}
	b := []byte("content whose upload is being completed")
	d := digest.FromBytes(b)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx, "r", d, int64(len(b)), bytes.NewReader(b)) }()
	select {
	case <-fail.reached:
		cancel()
		close(fail.release)
	case err := <-done:
		t.Fatalf("Put ended before completing its upload: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("Put whose completion failed succeeded")
	}
	out, err := srv.Client().ListMultipartUploads(&s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 0 {
		t.Errorf("after a write cut off while completing, the bucket has %d incomplete multipart uploads; want none", len(out.Uploads))
	}
}

// A read of stored content whose GET is cut mid-body (a connection reset)
// fails as the store being unavailable: it returned the bytes before the
// cut and no error, which the proxy took for a copy cut short on disk, so
// a manifest hit removed the manifest (with the upstream down, the image
// was lost) for a transient failure of the bucket.
func TestDriverStoreS3ReadCutIsUnavailable(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	cut := &s3test.CutGets{Next: srv.Next()}
	s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Front(t, bucket, cut))
	if err != nil {
		t.Fatal(err)
	}
	b := []byte(strings.Repeat(`{"schemaVersion":2}`, 100))
	d := digest.FromBytes(b)
	if err := s.Put(t.Context(), "r", d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	cut.Left.Store(1 << 20) // every GET
	got, err := s.ReadSized(t.Context(), "r", d, int64(len(b)))
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("ReadSized of content whose GET was cut = %d of %d bytes, %v; want an error wrapping ErrUnavailable", len(got), len(b), err)
	}
}

// fullS3 is an S3 endpoint in front of a real one whose every write
// (a PUT, or a multipart upload's POST) is refused as a full or
// over-quota S3-compatible store refuses it: status and code.
type fullS3 struct {
	next   http.Handler
	status int
	code   string
	full   atomic.Bool
}

func (f *fullS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !f.full.Load() || (r.Method != http.MethodPut && r.Method != http.MethodPost) {
		f.next.ServeHTTP(w, r)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	s3test.WriteError(w, f.status, f.code, "no room")
}

// A write refused by an S3-compatible store that has no room (MinIO's
// 507 XMinioStorageFull once its drives pass their free-space threshold,
// Ceph RGW's QuotaExceeded for a bucket or user quota) is a full store
// (storage.IsFull), as ENOSPC is on disk: the mirror then says so (507,
// docker_mirror_store_full, /readyz), not an internal error.
func TestDriverStoreS3FullIsFull(t *testing.T) {
	srv := s3test.Start(t)
	for _, c := range []struct {
		status int
		code   string
	}{{http.StatusInsufficientStorage, "XMinioStorageFull"}, {http.StatusForbidden, "QuotaExceeded"}} {
		t.Run(c.code, func(t *testing.T) {
			full := &fullS3{next: srv.Next(), status: c.status, code: c.code}
			s, err := storage.OpenDriverStore(t.Context(), "s3aws", srv.Front(t, srv.NewBucket(t), full))
			if err != nil {
				t.Fatal(err)
			}
			full.full.Store(true)
			b := []byte("content with no room for it")
			err = s.Put(t.Context(), "r", digest.FromBytes(b), int64(len(b)), bytes.NewReader(b))
			if err == nil || !storage.IsFull(err) {
				t.Errorf("Put refused with %d %s = %v; want a full store (storage.IsFull)", c.status, c.code, err)
			}
			if storage.IsDiskFull(err) {
				t.Errorf("Put refused with %d %s = %v: storage.IsDiskFull, the local disk's free space taken to measure the bucket", c.status, c.code, err)
			}
		})
	}
}

// A store under a rootdirectory of the bucket (a prefix shared with other
// data) reads a part of a blob (OpenRange: a ranged GET with the s3
// driver's own client, found by reflection) from the object the driver
// wrote, under that prefix, as Open does.
func TestDriverStoreS3OpenRangeUnderRootDirectory(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	params := srv.Params(bucket)
	params["rootdirectory"] = "/team/mirror"
	s, err := storage.OpenDriverStore(t.Context(), "s3aws", params)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	d := digest.FromBytes(body)
	if err := s.Put(t.Context(), "library/app", d, int64(len(body)), bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	for _, k := range srv.Keys(t, bucket) {
		if !strings.HasPrefix(k, "team/mirror/blobs/") {
			t.Errorf("bucket holds %q: want every key under the rootdirectory", k)
		}
	}
	rc, err := s.OpenRange(t.Context(), "library/app", d, 1000, 100)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, body[1000:1100]) {
		t.Errorf("OpenRange(1000, 100) read %q, %v; want %q (the range only)", got, err, body[1000:1100])
	}
}

// Two replicas pinning one image at the same moment on an S3 bucket (each
// reading no pin there before either writes): only one takes the pin for
// its own. Both did before, and the pin of the one whose copy then
// failed, taken back (UnpinIf), could be the one record of the bucket:
// the image the other replica's job pinned was open to eviction on every
// replica. The bucket's conditional write (If-None-Match: *) decides.
func TestSharedPinOfTwoReplicasAtOnceIsOneReplicasOwn(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	watchdog, stop := context.WithTimeout(t.Context(), 30*time.Second)
	defer stop()
	next := srv.Next()
	var reads atomic.Int64
	both := make(chan struct{}) // closed when both replicas read the pin
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/records/pins/") {
			if reads.Add(1) == 2 {
				close(both)
			}
			select {
			case <-both:
			case <-watchdog.Done():
				s3test.WriteError(w, http.StatusServiceUnavailable, "SlowDown", "the other replica never read the pin")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
	params := srv.Front(t, bucket, front)
	replica := func() (*storage.Index, storage.Records) {
		s, err := storage.OpenDriverStore(t.Context(), "s3aws", params)
		if err != nil {
			t.Fatal(err)
		}
		r := storage.NewDriverRecords(s.Driver())
		return openShared(t, r), r
	}
	a, records := replica()
	b, _ := replica()
	ref := digest.FromString("image").String()
	now := time.Unix(1700000000, 0).UTC()
	recA := storage.PinRecord{PinnedAt: now, Reason: "prefetch"}
	recB := storage.PinRecord{PinnedAt: now.Add(time.Second), Reason: "sync"}
	// Each pins for a job of its own, which records its claim to the pin.
	pin := func(ix *storage.Index, id string, rec storage.PinRecord) (bool, error) {
		j := &storage.Job{ID: id, Trigger: rec.Reason, State: storage.JobRunning, Pin: true, CreatedAt: now, UpdatedAt: now,
			Images: []storage.JobImage{{Image: "image", State: storage.JobRunning}}}
		if err := ix.PutJob(j); err != nil {
			return false, err
		}
		h := *j
		h.Images = nil
		return ix.PinForJob(watchdog, ref, rec, &h, 0, storage.JobImage{Image: "image", State: storage.JobRunning, PinnedAt: rec.PinnedAt})
	}
	var addedA, addedB bool
	var eg errgroup.Group
	eg.Go(func() (err error) { addedA, err = pin(a, "20250304T050607-aaaaaaaaaa", recA); return err })
	eg.Go(func() (err error) { addedB, err = pin(b, "20250304T050607-bbbbbbbbbb", recB); return err })
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	if addedA == addedB {
		t.Errorf("PinForJob: a %v, b %v; want one replica's pin only", addedA, addedB)
	}
	// What a restart resumes from: the claim of the job whose pin it is.
	for _, c := range []struct {
		ix    *storage.Index
		id    string
		added bool
	}{{a, "20250304T050607-aaaaaaaaaa", addedA}, {b, "20250304T050607-bbbbbbbbbb", addedB}} {
		j, ok, err := c.ix.Job(c.id)
		if err != nil || !ok || len(j.Images) != 1 {
			t.Fatalf("Job(%s) = %+v, %v, %v", c.id, j, ok, err)
		}
		if claimed := !j.Images[0].PinnedAt.IsZero(); claimed != c.added {
			t.Errorf("job %s records a claim to the pin %v, told added %v", c.id, claimed, c.added)
		}
	}
	// b's copy fails: it takes back its pin if it took it for its own.
	if addedB {
		if _, err := b.UnpinIf(watchdog, ref, recB); err != nil {
			t.Fatal(err)
		}
	}
	if addedA {
		if raw, err := records.Get(watchdog, "pins", ref); err != nil {
			t.Errorf("the bucket's pin record = %q, %v; want the image a's job pinned still pinned", raw, err)
		}
	}
}

// deletesHeld starts an S3 bucket for replicas to share (replica opens
// one: its index and records) whose deletes of records of kind (the
// driver's DeleteObjects, POST ?delete; a conditional delete, a DELETE of
// the key) wait for release to be closed, or for the watchdog (answered
// SlowDown); deleting is closed when the first arrives.
func deletesHeld(t *testing.T, watchdog context.Context, kind string) (deleting <-chan struct{}, release chan struct{}, replica func() (*storage.Index, storage.Records)) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	next := srv.Next()
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Has("delete") || r.Method == http.MethodDelete && strings.Contains(r.URL.Path, "/records/"+kind+"/") {
			once.Do(func() { close(held) })
			select {
			case <-release:
			case <-watchdog.Done():
				s3test.WriteError(w, http.StatusServiceUnavailable, "SlowDown", "never released")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
	params := srv.Front(t, bucket, front)
	return held, release, func() (*storage.Index, storage.Records) {
		s, err := storage.OpenDriverStore(t.Context(), "s3aws", params)
		if err != nil {
			t.Fatal(err)
		}
		r := storage.NewDriverRecords(s.Driver())
		return openShared(t, r), r
	}
}

// A failed job taking back its pin (UnpinIf) on an S3 bucket while
// another replica pins the same image (a prefetch with pin that found the
// job's pin, and wrote its own over it) leaves the other's pin: the
// bucket's record is deleted only while it is the one read (If-Match on
// DELETE). Before, the delete removed the pin just written, and the image
// the other replica's prefetch pinned was open to eviction everywhere.
func TestSharedUnpinIfLeavesAPinWrittenSinceItRead(t *testing.T) {
	watchdog, stop := context.WithTimeout(t.Context(), 30*time.Second)
	defer stop()
	deleting, release, replica := deletesHeld(t, watchdog, "pins")
	a, records := replica()
	b, _ := replica()
	ref := digest.FromString("image").String()
	now := time.Unix(1700000000, 0).UTC()
	job := storage.PinRecord{PinnedAt: now, Reason: "prefetch"}
	other := storage.PinRecord{PinnedAt: now.Add(time.Second), Reason: "sync"}
	if added, err := a.PinAdded(watchdog, ref, job); err != nil || !added {
		t.Fatalf("PinAdded = %v, %v", added, err)
	}
	unpinned := make(chan error, 1)
	go func() {
		_, err := a.UnpinIf(watchdog, ref, job)
		unpinned <- err
	}()
	select {
	case <-deleting:
	case <-watchdog.Done():
		t.Fatal("UnpinIf never deleted the bucket's pin")
	}
	if added, err := b.PinAdded(watchdog, ref, other); err != nil || added {
		t.Fatalf("b's PinAdded over a's pin = %v, %v; want pinned, not its own", added, err)
	}
	close(release)
	if err := <-unpinned; err != nil {
		t.Fatal(err)
	}
	raw, err := records.Get(watchdog, "pins", ref)
	var got storage.PinRecord
	if err != nil || json.Unmarshal(raw, &got) != nil || got.Reason != other.Reason {
		t.Errorf("the bucket's pin record = %q, %v; want b's pin, written after a read its own", raw, err)
	}
}

// A referrers list another replica fetches again on an S3 bucket while
// this replica's collection deletes the one it read (of a subject no image
// holds) stays: deleted only while it is the one read (If-Match), not the
// list written after the collection read it.
func TestSharedForgottenReferrersListFetchedAgainWhileDeletedStays(t *testing.T) {
	watchdog, stop := context.WithTimeout(t.Context(), 30*time.Second)
	defer stop()
	deleting, release, replica := deletesHeld(t, watchdog, "referrers")
	a, records := replica()
	b, _ := replica()
	old, recent := time.Unix(1700000000, 0).UTC(), time.Unix(1700090000, 0).UTC()
	subject := digest.FromString("unheld")
	must(t, b.PutReferrers("docker.io", "library/a", subject, "", storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: old, CheckedAt: old}))
	forgot := make(chan error, 1)
	go func() {
		_, err := b.ForgetUnheldReferrers(func(_ digest.Digest, fetched time.Time) bool { return fetched.Before(recent) })
		forgot <- err
	}()
	select {
	case <-deleting:
	case <-watchdog.Done():
		t.Fatal("the collection never deleted the list")
	}
	fresh := storage.ReferrersRecord{Body: []byte(`{"manifests":[]}`), FetchedAt: recent, CheckedAt: recent}
	must(t, a.PutReferrers("docker.io", "library/a", subject, "", fresh))
	close(release)
	if err := <-forgot; err != nil {
		t.Fatal(err)
	}
	raw, err := records.Get(watchdog, "referrers", "docker.io/library/a@"+subject.String()+"\x00")
	var got storage.ReferrersRecord
	if err != nil || json.Unmarshal(raw, &got) != nil || !bytes.Equal(got.Body, fresh.Body) {
		t.Errorf("the bucket's list = %q, %v; want the one a fetched again", raw, err)
	}
}

// A tag another replica records moved, on an S3 bucket, while this
// replica's eviction deletes the record it read (naming the image
// evicted) stays: deleted only while it is the record read (If-Match),
// not the one naming the image the tag moved to, which every replica
// would otherwise have lost (a pull of the tag asking the upstream
// again, or failing with it down).
func TestSharedEvictedTagMovedWhileDeletedStays(t *testing.T) {
	watchdog, stop := context.WithTimeout(t.Context(), 30*time.Second)
	defer stop()
	deleting, release, replica := deletesHeld(t, watchdog, "tags")
	a, _ := replica()
	b, _ := replica()
	now := time.Unix(1700000000, 0).UTC()
	evicted, moved := digest.FromString("evicted"), digest.FromString("moved")
	record := func(ix *storage.Index, d digest.Digest) {
		t.Helper()
		must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/x", Digest: d, Tag: "v1",
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now}}))
	}
	record(b, evicted)
	unrooted := make(chan error, 1)
	go func() {
		unrooted <- b.UnrootImages([]storage.Unroot{{Upstream: "docker.io", Repo: "library/x", Digest: evicted, Tags: []string{"v1"}}})
	}()
	select {
	case <-deleting:
	case <-watchdog.Done():
		t.Fatal("the eviction never deleted the tag")
	}
	record(a, moved)
	close(release)
	if err := <-unrooted; err != nil {
		t.Fatal(err)
	}
	c, _ := replica()
	if rec, ok, err := c.Tag("docker.io", "library/x", "v1"); err != nil || !ok || rec.Digest != moved {
		t.Errorf("a new replica reads the tag %+v, %v, %v; want it naming %s, where it moved", rec, ok, err, moved)
	}
}
