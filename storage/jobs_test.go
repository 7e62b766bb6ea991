package storage_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A job's header and images recorded change by change read back whole,
// after the index is reopened too: what a restart resumes from.
func TestJobRecordsSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	j := &storage.Job{ID: "20250304T050607-aaaaaaaaaa", Trigger: "prefetch", State: storage.JobQueued, Platforms: []string{"linux/amd64"}, Pin: true, CreatedAt: t0, UpdatedAt: t0}
	for i := range 5 {
		j.Images = append(j.Images, storage.JobImage{Image: fmt.Sprintf("image-%d", i), State: storage.JobQueued})
	}
	if err := ix.PutJob(j); err != nil {
		t.Fatal(err)
	}
	h := *j
	h.Images, h.State, h.UpdatedAt = nil, storage.JobRunning, t0.Add(1)
	done := storage.JobImage{Image: "image-1", State: storage.JobDone, Digest: "sha256:1", PlatformsDone: []string{"linux/amd64"}, PlatformsTotal: 1, BytesDone: 10, BytesTotal: 10}
	failed := storage.JobImage{Image: "image-3", State: storage.JobFailed, Error: "boom"}
	if err := ix.UpdateJob(&h, map[int]storage.JobImage{1: done, 3: failed}); err != nil {
		t.Fatal(err)
	}
	finished := &storage.Job{ID: "20250304T050608-bbbbbbbbbb", Trigger: "sync", State: storage.JobDone, Images: []storage.JobImage{{Image: "x", State: storage.JobDone}}, CreatedAt: t0, UpdatedAt: t0}
	if err := ix.PutJob(finished); err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	ix = openIndex(t, path)
	defer ix.Close()

	check := func(where string, got *storage.Job) {
		t.Helper()
		if got.ID != j.ID || got.State != storage.JobRunning || !got.Pin || got.Platforms[0] != "linux/amd64" || !got.UpdatedAt.Equal(t0.Add(1)) || len(got.Images) != 5 {
			t.Fatalf("%s: job %+v", where, got)
		}
		for i, img := range got.Images {
			want := j.Images[i]
			switch i {
			case 1:
				want = done
			case 3:
				want = failed
			}
			if fmt.Sprint(img) != fmt.Sprint(want) {
				t.Errorf("%s: image %d = %+v, want %+v", where, i, img, want)
			}
		}
	}
	got, ok, err := ix.Job(j.ID)
	if err != nil || !ok {
		t.Fatalf("Job: %v %v", ok, err)
	}
	check("Job", got)
	unfinished, err := ix.UnfinishedJobs()
	if err != nil || len(unfinished) != 1 {
		t.Fatalf("UnfinishedJobs: %d jobs, %v", len(unfinished), err)
	}
	check("UnfinishedJobs", unfinished[0])
	list, err := ix.Jobs(10)
	if err != nil || len(list) != 2 || list[0].ID != finished.ID || len(list[0].Images) != 1 {
		t.Fatalf("Jobs: %+v %v", list, err)
	}
	check("Jobs", list[1])
	if _, ok, err := ix.Job("nope"); ok || err != nil {
		t.Errorf("unknown job: %v %v", ok, err)
	}
}

// A new job prunes the finished jobs older than the newest KeptJobs (a
// sync every few minutes adds one a run, with up to a thousand images
// each); an unfinished one stays, whatever its age: a start resumes it.
func TestOldFinishedJobsPruned(t *testing.T) {
	ix := openIndex(t, filepath.Join(t.TempDir(), "index.db"))
	defer ix.Close()
	id := func(i int) string { return fmt.Sprintf("20250304T%06d-aaaaaaaaaa", i) }
	put := func(i int, state string) {
		t.Helper()
		j := &storage.Job{ID: id(i), Trigger: "sync", State: state, Images: []storage.JobImage{{Image: "x", State: state}}, CreatedAt: t0, UpdatedAt: t0}
		if err := ix.PutJob(j); err != nil {
			t.Fatal(err)
		}
	}
	put(0, storage.JobRunning) // left by a crash
	const extra = 5
	for i := 1; i <= storage.KeptJobs+extra; i++ {
		put(i, storage.JobDone)
	}
	put(storage.KeptJobs+extra+1, storage.JobQueued)
	jobs, err := ix.Jobs(10 * storage.KeptJobs)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != storage.KeptJobs+2 {
		t.Errorf("%d jobs kept, want %d finished and the 2 unfinished", len(jobs), storage.KeptJobs)
	}
	for i := 1; i <= extra; i++ {
		if _, ok, err := ix.Job(id(i)); ok || err != nil {
			t.Errorf("job %s, among the oldest finished, kept (%v)", id(i), err)
		}
	}
	for _, i := range []int{0, extra + 1, storage.KeptJobs + extra} {
		if j, ok, err := ix.Job(id(i)); !ok || err != nil || len(j.Images) != 1 {
			t.Errorf("job %s lost: %v %v", id(i), ok, err)
		}
	}
	if un, err := ix.UnfinishedJobs(); err != nil || len(un) != 2 {
		t.Errorf("unfinished jobs %d, %v; want the 2", len(un), err)
	}
}
