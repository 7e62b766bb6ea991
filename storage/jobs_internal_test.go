package storage

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// newJob is a queued job of n images.
func newJob(id string, n int) *Job {
	t := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	j := &Job{ID: id, Trigger: "prefetch", State: JobQueued, CreatedAt: t, UpdatedAt: t}
	for i := range n {
		j.Images = append(j.Images, JobImage{Image: fmt.Sprintf("library/image-%d:latest", i), State: JobQueued})
	}
	return j
}

// Recording one image's change writes a bounded number of pages, however
// many images the job has: the job is not rewritten whole.
func TestJobImageChangeIsBounded(t *testing.T) {
	ix, err := OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	pageSize := ix.db.Info().PageSize
	allocated := func() int64 {
		s := ix.db.Stats()
		return s.TxStats.GetPageAlloc()
	}
	written := func(n int) int64 {
		t.Helper()
		j := newJob(fmt.Sprintf("job-%d", n), n)
		if err := ix.PutJob(j); err != nil {
			t.Fatal(err)
		}
		before := allocated()
		h := *j
		h.Images = nil
		h.State = JobRunning
		img := j.Images[n/2]
		img.State, img.Digest = JobDone, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		if err := ix.UpdateJob(&h, map[int]JobImage{n / 2: img}); err != nil {
			t.Fatal(err)
		}
		return allocated() - before
	}
	small, large := written(10), written(2000)
	t.Logf("bytes of pages written by one image change: %d (10 images), %d (2,000 images)", small, large)
	if large > int64(8*pageSize) {
		t.Errorf("one image change of a 2,000-image job wrote %d bytes of pages (%d for 10 images); want at most %d", large, small, 8*pageSize)
	}
}

// A job recorded before images had records of their own (the images in
// the job's record) reads back whole, and its first change moves the
// images out without losing any.
func TestLegacyJobRecord(t *testing.T) {
	ix, err := OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	j := newJob("legacy", 3)
	j.Images[0].State = JobDone
	if err := ix.db.Update(func(tx *bolt.Tx) error { return put(tx, bucketJobs, []byte(j.ID), j) }); err != nil {
		t.Fatal(err)
	}
	got, ok, err := ix.Job(j.ID)
	if err != nil || !ok || len(got.Images) != 3 || got.Images[0].State != JobDone {
		t.Fatalf("legacy job read as %+v, %v, %v", got, ok, err)
	}
	unfinished, err := ix.UnfinishedJobs()
	if err != nil || len(unfinished) != 1 || len(unfinished[0].Images) != 3 {
		t.Fatalf("UnfinishedJobs: %+v, %v", unfinished, err)
	}
	h := *j
	h.Images, h.State = nil, JobRunning
	img := j.Images[2]
	img.State = JobFailed
	if err := ix.UpdateJob(&h, map[int]JobImage{2: img}); err != nil {
		t.Fatal(err)
	}
	got, _, err = ix.Job(j.ID)
	if err != nil || got.State != JobRunning || len(got.Images) != 3 || got.Images[0].State != JobDone || got.Images[1].State != JobQueued || got.Images[2].State != JobFailed {
		t.Fatalf("after the first change: %+v, %v", got, err)
	}
}
