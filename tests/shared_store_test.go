package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
	"github.com/opencontainers/go-digest"
)

// sharedBucket starts an S3 server (versitygw; the test skips without it)
// with one bucket, and returns the configuration change that puts a mirror
// on it.
func sharedBucket(t *testing.T) (*s3test.Server, string, func(*config.Config)) {
	t.Helper()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	return srv, bucket, func(c *config.Config) { c.Storage = srv.Storage(bucket) }
}

// Two replicas on one bucket with data directories of their own: the
// second, started empty after the upstream went down, serves everything
// the first fetched (the index by tag and by digest, every linux platform,
// every blob) from the records the first wrote beside the content.
func TestSharedBucketReplicaServesWhatAnotherFetched(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}

	a := servertest.StartConfigured(t, ups, onBucket)
	if !a.Index.Shared() {
		t.Fatal("index on an S3 store does not share its records")
	}
	wantManifest(t, get(t, a.URL()+"/v2/library/multi/manifests/v1"), ma.Index, ma.MediaType)
	a.WaitIdle()
	up.Stop()

	var records int
	for _, k := range s3srv.Keys(t, bucket) {
		if strings.HasPrefix(k, "records/") {
			records++
		}
	}
	if records == 0 {
		t.Fatal("the first replica wrote no records in the bucket")
	}

	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, b.URL()+"/v2/library/multi/manifests/v1"), ma.Index, ma.MediaType)
	wantManifest(t, get(t, b.URL()+"/v2/library/multi/manifests/"+ma.Digest), ma.Index, ma.MediaType)
	served := 0
	for platform, img := range ma.Platforms {
		if !strings.HasPrefix(platform, "linux/") {
			continue
		}
		wantImage(t, b, "library/multi", img)
		served++
	}
	if served != 3 {
		t.Fatalf("checked %d linux platforms; the fixture has 3", served)
	}
	// A platform's manifest by tag, as a single-platform client asks.
	amd := ma.Platforms["linux/amd64"]
	r := do(t, http.MethodGet, b.URL()+"/v2/library/multi/manifests/v1", map[string]string{"Accept": amd.MediaType})
	wantManifest(t, r, amd.Manifest, amd.MediaType)
	// Another repository's name never reaches this content: links are
	// shared, not bypassed.
	if r := get(t, b.URL()+"/v2/library/other/manifests/"+ma.Digest); r.status == http.StatusOK {
		t.Errorf("the index was served for a repository it was never fetched for")
	}
}

// A collection on one replica reads every replica's records in the bucket:
// it removes nothing another replica fetched (which that replica then serves
// with the upstream down), while content nobody records is still removed.
// Eviction by size counts the bucket's total, not one replica's.
func TestSharedBucketCollectionKeepsOtherReplicasContent(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	x := up.SeedMultiArch(t, "library/x", "v1", fixture.OCI)
	y := up.SeedMultiArch(t, "library/y", "v1", fixture.OCI)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}

	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, a.URL()+"/v2/library/x/manifests/v1"), x.Index, x.MediaType)
	wantManifest(t, get(t, b.URL()+"/v2/library/y/manifests/v1"), y.Index, y.MediaType)
	a.WaitIdle()
	b.WaitIdle()
	sizeA, sizeB := a.Index.StoredBytes(), b.Index.StoredBytes()

	// Content no replica records: the collection must still remove it.
	stray := []byte("stray blob no replica recorded")
	strayDigest := digestOf(t, sha(stray))
	if err := b.Store.Put(t.Context(), "", strayDigest, int64(len(stray)), bytes.NewReader(stray)); err != nil {
		t.Fatal(err)
	}

	// Past a single mirror's grace period, not a shared store's: the
	// stray blob may be another replica's work in progress.
	b.Clock.Advance(lifecycle.DefaultGrace + time.Minute)
	if rep, err := b.Server.Collector.Collect(t.Context()); err != nil || rep.BlobsRemoved != 0 {
		t.Fatalf("collection within a shared store's grace period: %+v, %v; want nothing removed", rep, err)
	}
	b.Clock.Advance(time.Hour) // past the grace period
	rep, err := b.Server.Collector.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.BlobsRemoved != 1 || rep.ManifestsRemoved != 0 {
		t.Errorf("collection removed %d blobs and %d manifests; want the stray blob only", rep.BlobsRemoved, rep.ManifestsRemoved)
	}
	if _, err := b.Store.Stat(t.Context(), "", strayDigest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("stray blob still stored: %v", err)
	}
	if got := b.Index.StoredBytes(); got <= max(sizeA, sizeB) || got > sizeA+sizeB {
		// Layers both hold count once: more than either, at most the sum.
		t.Errorf("b counts %d bytes after reading the bucket; want the bucket's total (a %d, b %d)", got, sizeA, sizeB)
	}

	up.Stop()
	for _, m := range []*servertest.Server{a, b} {
		for _, ma := range []*fixture.MultiArch{x, y} {
			wantManifest(t, get(t, m.URL()+"/v2/"+ma.Repo+"/manifests/"+ma.Tag), ma.Index, ma.MediaType)
			for platform, img := range ma.Platforms {
				if strings.HasPrefix(platform, "linux/") {
					wantImage(t, m, ma.Repo, img)
				}
			}
		}
	}
	var blobs int
	for _, k := range s3srv.Keys(t, bucket) {
		if strings.HasPrefix(k, "blobs/") {
			blobs++
		}
	}
	if blobs == 0 {
		t.Fatal("no content in the bucket")
	}
}

// A tag that moved is seen by every replica: the one that revalidated it
// records the new digest in the bucket, and another replica whose own
// record is old takes the bucket's newer one, also with the upstream down
// (instead of serving its stale digest).
func TestSharedBucketTagMoveSeenByOtherReplica(t *testing.T) {
	_, _, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	old := up.SeedImage(t, "library/moving", "v1", 1, 4<<10)
	moved := up.SeedImage(t, "library/moving", "v2", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, a.URL()+"/v2/library/moving/manifests/v1"), old.Manifest, old.MediaType)
	wantManifest(t, get(t, b.URL()+"/v2/library/moving/manifests/v1"), old.Manifest, old.MediaType)
	// Their records are written after the answers.
	a.WaitIdle()
	b.WaitIdle()

	up.Tag(t, "library/moving", moved.Digest, "v1")
	a.Clock.Advance(2 * time.Minute) // past the tag TTL
	b.Clock.Advance(2 * time.Minute)
	wantManifest(t, get(t, a.URL()+"/v2/library/moving/manifests/v1"), moved.Manifest, moved.MediaType)
	a.WaitIdle()
	up.Stop()

	r := get(t, b.URL()+"/v2/library/moving/manifests/v1")
	wantManifest(t, r, moved.Manifest, moved.MediaType)
	if got := r.header.Get("X-Cache"); got != "hit" {
		t.Errorf("X-Cache %q; want hit (the bucket's record is fresh)", got)
	}
}

// A prefetch job run by one replica is readable on another (its state and
// every image's progress, from the bucket), and a pin it sets keeps the
// image out of the other replica's eviction.
func TestSharedBucketPrefetchJobAndPins(t *testing.T) {
	_, _, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)

	r := postPrefetch(t, a, `{"images": ["multi:v1"], "pin": true}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /prefetch: %d %s", r.status, r.body)
	}
	a.WaitIdle()
	j := job(t, b, r.header.Get("Location"))
	if j.State != storage.JobDone || len(j.Images) != 1 || j.Images[0].State != storage.JobDone || j.Images[0].Digest != ma.Digest {
		t.Fatalf("the job as the other replica reads it: %+v", j)
	}

	// b evicts down to nothing: the pinned image stays, served with the
	// upstream down.
	b.Clock.Advance(time.Hour)
	if _, err := b.Server.Collector.Evict(t.Context(), 1, 0, b.Clock.Now()); err != nil {
		t.Fatal(err)
	}
	up.Stop()
	for _, m := range []*servertest.Server{a, b} {
		wantManifest(t, get(t, m.URL()+"/v2/library/multi/manifests/v1"), ma.Index, ma.MediaType)
		wantImage(t, m, "library/multi", ma.Platforms["linux/arm64"])
	}
}

// With the S3 server down, hits are answered 503 UNAVAILABLE (the store
// cannot be reached; clients retry or fall back), never a 500, and /readyz
// fails.
func TestSharedBucketS3Unreachable(t *testing.T) {
	s3srv, _, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, onBucket)
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	s3srv.Stop()
	for _, path := range []string{"/v2/library/app/blobs/" + img.Layers[0], "/v2/library/app/manifests/v1", "/v2/library/app/manifests/" + img.Digest} {
		wantError(t, get(t, m.URL()+path), http.StatusServiceUnavailable, "UNAVAILABLE")
	}
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with S3 down: %d", r.status)
	}
}

// A collection on one replica keeps the signatures another replica stored
// with an image it filled (the referrers its upstream's API listed), and
// the other replica then serves that list too, with the upstream down.
// Before, the referrers lists were each replica's own: the collection on
// the replica that had not filled the image removed the signature from
// the bucket, and the one that had listed it but answered 503 for it.
func TestSharedBucketCollectionKeepsOtherReplicasReferrers(t *testing.T) {
	_, _, onBucket := sharedBucket(t)
	up, host, subject := startSubject(t, referrersRegistry())
	sig := pushReferrer(t, host, "library/signed", sigType, subject)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)
	cranePull(t, ref(t, a, "signed:1"))
	a.WaitIdle()
	up.Close()

	b.Clock.Advance(lifecycle.DefaultGrace + 2*time.Hour) // past a shared store's grace period
	if _, err := b.Server.Collector.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*servertest.Server{a, b} {
		m.Clock.Advance(time.Hour) // past the tag TTL: the upstream is asked, and fails
		wantReferrers(t, get(t, m.URL()+"/v2/signed/referrers/"+subject.Digest.String()), "stale", false, sig)
		if r := get(t, m.URL()+"/v2/signed/manifests/"+sig); r.status != http.StatusOK || sha(r.body) != sig {
			t.Errorf("the signature after another replica's collection: %d %s", r.status, r.body)
		}
	}
}

// A prefetch by digest on one replica that outlasts a shared store's grace
// period (a large image, a slow upstream) keeps what it stored meanwhile
// from another replica's collection: its copy is held on its own replica
// only, so on the bucket it must be a root from its start, as a pull by
// digest's fill is. Before, it was one only at its end: the other
// replica's collection removed the manifest and config the copy had
// recorded more than ten minutes before, the job then said done, and the
// image was served by neither replica with the upstream down.
func TestSharedBucketCollectionKeepsAnotherReplicasLongPrefetch(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	front, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/big", "v1", 2, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onFront)
	b := servertest.StartConfigured(t, ups, onFront)

	// The manifest's and the config's records in the bucket, then the
	// last layer held mid-body: the copy is under way.
	manifestRecorded, configRecorded := make(chan struct{}), make(chan struct{})
	var once [2]sync.Once
	written := func(path string) {
		switch {
		case strings.Contains(path, "/records/manifests/") && strings.Contains(path, img.Digest[len("sha256:"):]):
			once[0].Do(func() { close(manifestRecorded) })
		case strings.Contains(path, "/records/blobs/") && strings.Contains(path, img.Config[len("sha256:"):]):
			once[1].Do(func() { close(configRecorded) })
		}
	}
	front.written.Store(&written)
	gate := up.GateBlob(img.Layers[1], 1)
	r := postPrefetch(t, a, `{"images": ["big@`+img.Digest+`"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /prefetch: %d %s", r.status, r.body)
	}
	awaitReached(t, gate, img.Layers[1])
	wait(t, t.Context(), manifestRecorded, "the manifest's record")
	wait(t, t.Context(), configRecorded, "the config's record")

	// Eleven minutes into the copy, b collects.
	b.Clock.Advance(lifecycle.SharedGrace + time.Minute)
	rep, err := b.Server.Collector.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.ManifestsRemoved != 0 || rep.BlobsRemoved != 0 {
		t.Errorf("the other replica's collection removed %d manifests and %d blobs of the copy under way", rep.ManifestsRemoved, rep.BlobsRemoved)
	}

	gate.Open()
	a.WaitIdle()
	if j := job(t, a, r.header.Get("Location")); j.State != storage.JobDone {
		t.Fatalf("job %+v", j)
	}
	up.Stop()
	for _, m := range []*servertest.Server{a, b} {
		wantImage(t, m, "library/big", img)
	}
}

// heldPrefetch has replica a prefetch app:v1 (img, one layer) and holds
// the job in its layer's download; it returns the job's location and the
// gate that holds it.
func heldPrefetch(t *testing.T, a *servertest.Server, up *fixture.Upstream, img *fixture.Image) (string, *fixture.Gate) {
	t.Helper()
	gate := up.GateBlob(img.Layers[0], 1)
	r := postPrefetch(t, a, `{"images": ["app:v1"]}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST /prefetch: %d %s", r.status, r.body)
	}
	awaitReached(t, gate, img.Layers[0])
	return r.header.Get("Location"), gate
}

// A prefetch job running on one replica reads as running on the others
// too (a client polling GET /prefetch/ID through a load balancer), its
// images' states as the replica running it has them, not as queued until
// they end.
func TestSharedBucketRunningJobReadOnAnotherReplica(t *testing.T) {
	_, _, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)
	location, gate := heldPrefetch(t, a, up, img)
	onA, onB := job(t, a, location), job(t, b, location)
	if onA.State != storage.JobRunning || onA.Images[0].State != storage.JobRunning {
		t.Fatalf("the job on the replica running it: %+v", onA)
	}
	if onB.State != onA.State || len(onB.Images) != 1 || onB.Images[0].State != onA.Images[0].State {
		t.Errorf("the job on the other replica: state %q, images %+v; the replica running it says %q, %+v", onB.State, onB.Images, onA.State, onA.Images)
	}
	gate.Open()
	a.WaitIdle()
	if j := job(t, b, location); j.State != storage.JobDone {
		t.Errorf("the job done, on the other replica: %+v", j)
	}
}

// An image no replica records any more (its tag and mirror record gone, as
// an eviction or a tag moved away leaves it) keeps its content in the
// bucket until a collection removes it. A replica that pulls it again, or
// a new image on its config and layers, meanwhile records it and reuses
// that content without writing it. A collection on another replica that
// had read the bucket's records just before removed it all the same,
// being past the grace period: the image just recorded named a manifest,
// a config and layers no longer stored, and with the upstream down its
// pulls failed. What another replica recorded or reused since the
// collection read the records is now kept (and what no image names still
// goes: the old manifest, once a new one reuses its blobs).
func TestSharedBucketCollectionKeepsContentAnotherReplicaReuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		// multi seeds a multi-arch index rather than an image; again
		// pulls it again, else a new one on the same content (tag v2).
		multi, again bool
	}{
		{"the same image", false, true},
		{"a new image on its blobs", false, false},
		{"a new index on its images", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s3srv, bucket, onBucket := sharedBucket(t)
			front, onFront := startSlowDownS3(t, s3srv, bucket)
			up := fixture.StartUpstream(t)
			// v1 is pulled first; images are those the manifest pulled
			// last is or names, which must be served in the end.
			var v1 struct {
				raw        []byte
				digest, mt string
				images     []*fixture.Image
			}
			if tc.multi {
				ma := up.SeedMultiArch(t, "library/app", "v1", fixture.OCI, fixture.WithoutAttestations())
				v1.raw, v1.digest, v1.mt = ma.Index, ma.Digest, ma.MediaType
				for platform, img := range ma.Platforms {
					if strings.HasPrefix(platform, "linux/") {
						v1.images = append(v1.images, img)
					}
				}
			} else {
				img := up.SeedImage(t, "library/app", "v1", 2, 4<<10)
				v1.raw, v1.digest, v1.mt, v1.images = img.Manifest, img.Digest, img.MediaType, []*fixture.Image{img}
			}
			pulled, tag, removed := v1.raw, "v1", 0
			if !tc.again {
				raw := annotated(t, v1.raw)
				d := up.PutManifest(t, "library/app", "v2", v1.mt, raw)
				pulled, tag, removed = raw, "v2", 1 // v1's manifest, which no image names
				if !tc.multi {
					v2 := *v1.images[0]
					v2.Manifest, v2.Digest = raw, d
					v1.images = []*fixture.Image{&v2}
				}
			}
			ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
			a := servertest.StartConfigured(t, ups, onBucket)
			b := servertest.StartConfigured(t, ups, onFront)
			wantManifest(t, get(t, a.URL()+"/v2/library/app/manifests/v1"), v1.raw, v1.mt)
			a.WaitIdle()
			d := digestOf(t, v1.digest)
			unrootV1(t, a, d)

			// An hour later b collects. Once it has read the records and
			// listed the content, a pulls, while b's next requests to the
			// bucket wait.
			a.Clock.Advance(time.Hour)
			b.Clock.Advance(time.Hour)
			next, goOn := make(chan struct{}), make(chan struct{})
			release := sync.OnceFunc(func() { close(goOn) })
			defer release() // a failure before the pull's end
			var listed atomic.Bool
			var once sync.Once
			held := func(r *http.Request) {
				if listed.Load() {
					once.Do(func() { close(next) })
					<-goOn
				} else if r.Method == http.MethodGet && strings.HasPrefix(strings.TrimPrefix(r.URL.Query().Get("prefix"), "/"), "blobs") {
					listed.Store(true)
				}
			}
			front.requested.Store(&held)
			type result struct {
				rep lifecycle.Report
				err error
			}
			collected := make(chan result, 1)
			go func() {
				rep, err := b.Server.Collector.Collect(t.Context())
				collected <- result{rep, err}
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			wait(t, ctx, next, "b's collection going on after its listing")
			wantManifest(t, get(t, a.URL()+"/v2/library/app/manifests/"+tag), pulled, v1.mt)
			a.WaitIdle()
			release()
			res := <-collected
			if res.err != nil {
				t.Fatal(res.err)
			}
			if res.rep.BlobsRemoved != 0 || res.rep.ManifestsRemoved != removed {
				t.Errorf("b's collection removed %d blobs and %d manifests; want %d manifests, and nothing of the image a had just recorded", res.rep.BlobsRemoved, res.rep.ManifestsRemoved, removed)
			}

			up.Stop()
			for _, m := range []*servertest.Server{a, b} {
				wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/"+tag), pulled, v1.mt)
				for _, img := range v1.images {
					wantImage(t, m, "library/app", img)
				}
			}
		})
	}
}

// A prefetch job whose replica stops in the middle of it for good (scaled
// down, or replaced by one with an empty data directory, which resumes
// nothing) is not left reading as running for ever on the other replicas,
// where a client polling GET /prefetch/ID through a load balancer waits
// for it to end: once its replica has not updated it for a while,
// it reads as failed, its unfinished images saying that it was lost.
func TestSharedBucketJobOfAStoppedReplicaReadsAsLost(t *testing.T) {
	_, _, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)
	location, gate := heldPrefetch(t, a, up, img)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		a.Stop()
	}()
	gate.Open()
	wait(t, t.Context(), stopped, "a's stop")

	if j := job(t, b, location); j.State != storage.JobRunning {
		t.Fatalf("the job just after its replica stopped: %+v; want it running still (its replica may come back)", j)
	}
	b.Clock.Advance(time.Hour)
	j := job(t, b, location)
	if j.State != storage.JobFailed || len(j.Images) != 1 || j.Images[0].State != storage.JobFailed || !strings.Contains(j.Images[0].Error, "lost") {
		t.Errorf("the job of a replica stopped %v ago: state %q, images %+v; want it failed, lost", time.Hour, j.State, j.Images)
	}
}

// A prefetch job whose image takes long (here held mid-download) reads as
// running on the other replicas however long it takes: its replica
// rewrites its shared copy while it runs, progress or none, so that it is
// not taken for the job of a replica that is gone
// (TestSharedBucketJobOfAStoppedReplicaReadsAsLost).
func TestSharedBucketLongJobNotReadAsLost(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	front, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onFront, proxy.WithJobBeat(10*time.Millisecond))
	b := servertest.StartConfigured(t, ups, onBucket)
	location, gate := heldPrefetch(t, a, up, img)
	defer gate.Open()

	// An hour into the download; the second write of the job's copy
	// since began after the clock moved.
	a.Clock.Advance(time.Hour)
	b.Clock.Advance(time.Hour)
	rewritten := make(chan struct{})
	var writes atomic.Int32
	written := func(path string) {
		if strings.Contains(path, "/records/jobs/") && writes.Add(1) == 2 {
			close(rewritten)
		}
	}
	front.written.Store(&written)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	wait(t, ctx, rewritten, "the job's copy rewritten")
	if j := job(t, b, location); j.State != storage.JobRunning || len(j.Images) != 1 || j.Images[0].State != storage.JobRunning {
		t.Errorf("a job an hour into its image, on the other replica: state %q, images %+v; want it running", j.State, j.Images)
	}
	gate.Open()
	a.WaitIdle()
	if j := job(t, b, location); j.State != storage.JobDone {
		t.Errorf("the job done, on the other replica: %+v", j)
	}
}

// A manifest another replica reuses for an image it records keeps what it
// needs with it: a collection whose recheck of the records finds the
// manifest written again (storage.Index.Reuse) keeps the manifest's blobs
// too, though that replica has not written their records again yet (it
// reuses the manifest first, then its blobs). Before, the collection kept
// the manifest and removed its layers, and the image, recorded complete by
// the other replica a moment later, could not be pulled with the upstream
// down.
func TestSharedBucketCollectionKeepsBlobsOfAManifestAnotherReplicaReuses(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	frontA, onA := startSlowDownS3(t, s3srv, bucket)
	frontB, onB := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/app", "v1", fixture.OCI, fixture.WithoutAttestations())
	v2 := annotated(t, ma.Index)
	up.PutManifest(t, "library/app", "v2", ma.MediaType, v2) // a new index on v1's images
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onA)
	b := servertest.StartConfigured(t, ups, onB)
	wantManifest(t, get(t, a.URL()+"/v2/library/app/manifests/v1"), ma.Index, ma.MediaType)
	a.WaitIdle()
	d := digestOf(t, ma.Digest)
	unrootV1(t, a, d)
	a.Clock.Advance(time.Hour)
	b.Clock.Advance(time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// b collects; once it has read the records and listed the content,
	// its next requests to the bucket wait.
	listedB, goB := make(chan struct{}), make(chan struct{})
	releaseB := sync.OnceFunc(func() { close(goB) })
	defer releaseB() // a failure before the end
	var listed atomic.Bool
	var onceB sync.Once
	heldB := func(r *http.Request) {
		if listed.Load() {
			onceB.Do(func() { close(listedB) })
			<-goB
		} else if r.Method == http.MethodGet && strings.HasPrefix(strings.TrimPrefix(r.URL.Query().Get("prefix"), "/"), "blobs") {
			listed.Store(true)
		}
	}
	frontB.requested.Store(&heldB)
	collected := make(chan error, 1)
	go func() {
		_, err := b.Server.Collector.Collect(t.Context())
		collected <- err
	}()
	wait(t, ctx, listedB, "b's collection going on after its listing")

	// a pulls v2; once its fill has written the amd64 image's manifest
	// record again, its next requests to the bucket wait while b's
	// collection goes on.
	amd := ma.Platforms["linux/amd64"]
	reusedKey := "/records/manifests/" + strings.ReplaceAll(amd.Digest, ":", "_3A")
	var reused atomic.Bool
	reusedA, goA := make(chan struct{}), make(chan struct{})
	releaseA := sync.OnceFunc(func() { close(goA) })
	defer releaseA()
	var onceA sync.Once
	written := func(path string) {
		if strings.HasSuffix(path, reusedKey) {
			reused.Store(true)
		}
	}
	heldA := func(*http.Request) {
		if reused.Load() {
			onceA.Do(func() { close(reusedA) })
			<-goA
		}
	}
	frontA.written.Store(&written)
	frontA.requested.Store(&heldA)
	wantManifest(t, get(t, a.URL()+"/v2/library/app/manifests/v2"), v2, ma.MediaType)
	wait(t, ctx, reusedA, "a's fill going on after reusing the amd64 image's manifest")
	releaseB()
	if err := <-collected; err != nil {
		t.Fatal(err)
	}
	up.Stop()
	releaseA()
	a.WaitIdle()
	wantImage(t, a, "library/app", amd)
}

// annotated returns the manifest or index raw with an annotation added:
// another digest naming the same content.
func annotated(t *testing.T, raw []byte) []byte {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	doc["annotations"] = map[string]string{"rev": "2"}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unrootV1 drops m's records of library/app:v1, the image d, as an
// eviction's first step does: what it alone names is then collectable.
func unrootV1(t *testing.T, m *servertest.Server, d digest.Digest) {
	t.Helper()
	if err := m.Index.UnrootImages([]storage.Unroot{{
		Upstream: proxy.DefaultHost, Repo: "library/app", Digest: d, Tags: []string{"v1"},
		Fills: []storage.FillKey{{Upstream: proxy.DefaultHost, Repo: "library/app", Digest: d}},
	}}); err != nil {
		t.Fatal(err)
	}
}

// An image pulled again on one replica after a long idle spell is no
// longer the least recently pulled for the other replicas' evictions:
// its first pull after the spell writes its time to the bucket at once.
// Before, the replica serving it wrote the time at its next flush (every
// 30 s), and another replica's eviction under max_size meanwhile took
// the image for the oldest and removed it while it was being pulled: with
// the upstream down, its pulls then failed.
func TestSharedBucketEvictionSparesImagePulledAfterIdle(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	frontB, onB := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
	y := up.SeedImage(t, "library/y", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onB)
	stored := pullOlderThenNewer(t, a, b, x, y)

	// An hour later x, the older, is pulled on b (by digest: no tag
	// revalidated), and a evicts one image to get under max_size.
	wantImage(t, b, "library/x", x)
	rep, err := a.Server.Collector.Evict(t.Context(), stored-1, 0, a.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	wantEvicted(t, rep, y)
	up.Stop()
	wantImage(t, b, "library/x", x)

	// Pulled again within a few minutes, after b's flush: a hit writes
	// no pull time to the bucket, the flush does.
	if err := b.Index.Flush(); err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	count := func(path string) {
		if strings.Contains(path, "/records/access/") {
			writes.Add(1)
		}
	}
	frontB.written.Store(&count)
	b.Clock.Advance(2 * time.Minute)
	wantManifest(t, get(t, b.URL()+"/v2/library/x/manifests/"+x.Digest), x.Manifest, x.MediaType)
	if n := writes.Load(); n != 0 {
		t.Errorf("a pull two minutes after the last wrote %d pull times to the bucket; want none", n)
	}
}

// pullOlderThenNewer has a pull x (library/x:v1), then y (library/y:v1) 5
// minutes later, and writes both pulls' times to the bucket; it advances
// a's and b's clocks an hour past them and returns what a stores.
func pullOlderThenNewer(t *testing.T, a, b *servertest.Server, x, y *fixture.Image) int64 {
	t.Helper()
	wantImage(t, a, "library/x", x)
	a.WaitIdle()
	a.Clock.Advance(5 * time.Minute)
	wantImage(t, a, "library/y", y)
	a.WaitIdle()
	if err := a.Index.Flush(); err != nil {
		t.Fatal(err)
	}
	a.Clock.Advance(time.Hour)
	b.Clock.Advance(time.Hour)
	return a.Index.StoredBytes()
}

// wantEvicted fails t unless rep evicted img alone.
func wantEvicted(t *testing.T, rep lifecycle.Report, img *fixture.Image) {
	t.Helper()
	if len(rep.Evicted) != 1 || rep.Evicted[0].Digest.String() != img.Digest {
		var got []string
		for _, im := range rep.Evicted {
			got = append(got, im.Name()+"@"+im.Digest.String())
		}
		t.Errorf("evicted %v; want %s only", got, img.Digest)
	}
}

// An image pulled on one replica while another's eviction reads the
// bucket's records is spared too: the eviction reads its victims' pull
// times again before it removes them, and chooses again if one was pulled
// since. Before, the pull time b wrote once a had read the pull times
// came too late: a evicted the image b was serving, and with the upstream
// down b's pulls of it failed.
func TestSharedBucketEvictionRereadsItsVictimsPulls(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	frontA, onA := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
	y := up.SeedImage(t, "library/y", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onA)
	b := servertest.StartConfigured(t, ups, onBucket)
	stored := pullOlderThenNewer(t, a, b, x, y)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// a's eviction waits once it has read the pull times (it lists the
	// referrers answers next).
	readA, releaseA := holdListing(t, frontA, "referrers")
	evicted := evictAsync(func() (lifecycle.Report, error) {
		return a.Server.Collector.Evict(t.Context(), stored-1, 0, a.Clock.Now())
	})
	wait(t, ctx, readA, "a's eviction reading the referrers after the pull times")
	wantImage(t, b, "library/x", x)
	releaseA()
	res := <-evicted
	if res.err != nil {
		t.Fatal(res.err)
	}
	wantEvicted(t, res.rep, y)
	up.Stop()
	wantImage(t, b, "library/x", x)
}

// A tag another replica moved while an eviction ran is not removed with
// the image it named before: the eviction removes a tag's record from the
// bucket only while it names the image evicted. Before, a evicted the
// image the tag had named when it read the records, and deleted the
// bucket's record, which b had just written naming the new image: no
// replica without a record of its own then knew the tag, and with the
// upstream down its pulls failed.
func TestSharedBucketEvictionKeepsTagAnotherReplicaMoved(t *testing.T) {
	r := pulledOnA(t)
	a, b, up := r.a, r.b, r.up
	a.Clock.Advance(2 * time.Hour)
	b.Clock.Advance(2 * time.Hour)
	moved := up.SeedImage(t, "library/x", "v1", 1, 4<<10) // v1 moves upstream
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// a's eviction waits once it has read the tags (it lists the mirror
	// records next).
	readA, releaseA := holdListing(t, r.frontA, "mirrors")
	evicted := evictAsync(func() (lifecycle.Report, error) {
		return a.Server.Collector.Evict(t.Context(), 0, time.Hour, a.Clock.Now())
	})
	wait(t, ctx, readA, "a's eviction listing the mirror records after the tags")
	wantManifest(t, get(t, b.URL()+"/v2/library/x/manifests/v1"), moved.Manifest, moved.MediaType)
	b.WaitIdle()
	releaseA()
	if res := <-evicted; res.err != nil {
		t.Fatal(res.err)
	}
	up.Stop()
	c := servertest.StartConfigured(t, r.ups, r.onBucket)
	wantManifest(t, get(t, c.URL()+"/v2/library/x/manifests/v1"), moved.Manifest, moved.MediaType)
}

// An image pinned on one replica (a prefetch with "pin") while another's
// eviction reads the bucket's records is not evicted: the eviction reads
// its victims' pins again before it removes them. Before, a pin written
// once the eviction had read the pins came too late: the pinned image was
// evicted, and with the upstream down its pulls failed.
func TestSharedBucketEvictionRereadsItsVictimsPins(t *testing.T) {
	r := pulledOnA(t)
	a, b, up, x := r.a, r.b, r.up, r.x
	a.Clock.Advance(2 * time.Hour)
	b.Clock.Advance(2 * time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// a's eviction waits once it has read the pins (it lists the pull
	// times next).
	readA, releaseA := holdListing(t, r.frontA, "access")
	evicted := evictAsync(func() (lifecycle.Report, error) {
		return a.Server.Collector.Evict(t.Context(), 0, time.Hour, a.Clock.Now())
	})
	wait(t, ctx, readA, "a's eviction listing the pull times after the pins")
	if err := b.Index.Pin(t.Context(), storage.TagKey(proxy.DefaultHost, "library/x", "v1"), storage.PinRecord{PinnedAt: b.Clock.Now(), Reason: "prefetch"}); err != nil {
		t.Fatal(err)
	}
	releaseA()
	res := <-evicted
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.rep.ImagesEvicted != 0 {
		t.Errorf("a evicted %d images; the only one was pinned on b meanwhile", res.rep.ImagesEvicted)
	}
	up.Stop()
	wantImage(t, b, "library/x", x)
}

// An image pinned on one replica while an admin's eviction of it on
// another (the status page's evict) reads the bucket's records is not
// evicted: the eviction reads the image's pins again, in the bucket, as
// the lifecycle's does. It read them only in its own index: the pin, an
// answer of its replica, came too late, and the pinned image was evicted.
func TestSharedBucketEvictImageRereadsItsPins(t *testing.T) {
	r := pulledOnA(t)
	a, b, up, x := r.a, r.b, r.up, r.x
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// a's eviction waits once it has read the pins (it lists the pull
	// times next).
	readA, releaseA := holdListing(t, r.frontA, "access")
	evicted := evictAsync(func() (lifecycle.Report, error) {
		return a.Server.Collector.EvictImage(t.Context(), proxy.DefaultHost, "library/x", digest.Digest(x.Digest))
	})
	wait(t, ctx, readA, "a's eviction listing the pull times after the pins")
	if err := b.Index.Pin(t.Context(), storage.TagKey(proxy.DefaultHost, "library/x", "v1"), storage.PinRecord{PinnedAt: b.Clock.Now(), Reason: "admin"}); err != nil {
		t.Fatal(err)
	}
	releaseA()
	if res := <-evicted; !errors.Is(res.err, lifecycle.ErrImagePinned) {
		t.Errorf("a's eviction of an image pinned on b meanwhile: %+v, %v; want %v", res.rep.Evicted, res.err, lifecycle.ErrImagePinned)
	}
	up.Stop()
	wantImage(t, b, "library/x", x)
}

// onABucket are two replicas on one bucket, a through a slowDownS3 front
// (frontA), that a pulled image x through.
type onABucket struct {
	a, b     *servertest.Server
	frontA   *slowDownS3
	up       *fixture.Upstream
	ups      []servertest.Upstream
	onBucket func(*config.Config) // a replica on the bucket
	x        *fixture.Image       // library/x:v1
}

// pulledOnA starts two replicas on one bucket and pulls library/x:v1
// through a; its pull time is in the bucket.
func pulledOnA(t *testing.T) onABucket {
	t.Helper()
	s3srv, bucket, onBucket := sharedBucket(t)
	frontA, onA := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onA)
	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, a.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
	a.WaitIdle()
	if err := a.Index.Flush(); err != nil {
		t.Fatal(err)
	}
	return onABucket{a: a, b: b, frontA: frontA, up: up, ups: ups, onBucket: onBucket, x: x}
}

// holdListing holds, at front, the first listing of the bucket's records
// of kind (records/<kind>) until release is called (at the latest when
// the test ends): reached is closed when it comes.
func holdListing(t *testing.T, front *slowDownS3, kind string) (reached <-chan struct{}, release func()) {
	r, goOn := make(chan struct{}), make(chan struct{})
	release = sync.OnceFunc(func() { close(goOn) })
	t.Cleanup(release)
	var once sync.Once
	held := func(req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Query().Get("prefix"), "records/"+kind) {
			once.Do(func() {
				close(r)
				<-goOn
			})
		}
	}
	front.requested.Store(&held)
	return r, release
}

// evictResult is what an eviction run by evictAsync returned.
type evictResult struct {
	rep lifecycle.Report
	err error
}

// evictAsync runs evict in the background: its result comes on the
// channel.
func evictAsync(evict func() (lifecycle.Report, error)) <-chan evictResult {
	done := make(chan evictResult, 1)
	go func() {
		rep, err := evict()
		done <- evictResult{rep, err}
	}()
	return done
}
