package storage_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
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

// A job record that cannot be read (a flipped bit, its pages sound), its
// header's or an image's, made the start's read of the unfinished jobs
// fail: the server refused to start, saying "corrupt job" (or "corrupt
// image"), and verify --repair neither listed nor dropped it, so it
// refused at every start until index.db was removed. The start passes
// over it and resumes the others; verify lists it and its repair drops
// it, with its images.
func TestUnreadableJobRecordPassedOverAndDropped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path, id string)
	}{
		{"header", func(t *testing.T, path, id string) { fixture.DamageRecord(t, path, "jobs", id) }},
		{"image", func(t *testing.T, path, id string) { fixture.DamageRecord(t, path, "job_images/"+id, "") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "index.db")
			ix := openIndex(t, path)
			jobs := []*storage.Job{
				{ID: "20250304T050607-aaaaaaaaaa", Trigger: "prefetch", State: storage.JobQueued, Images: []storage.JobImage{{Image: "a", State: storage.JobQueued}}, CreatedAt: t0, UpdatedAt: t0},
				{ID: "20250304T050608-bbbbbbbbbb", Trigger: "prefetch", State: storage.JobRunning, Images: []storage.JobImage{{Image: "b", State: storage.JobQueued}}, CreatedAt: t0, UpdatedAt: t0},
			}
			for _, j := range jobs {
				must(t, ix.PutJob(j))
			}
			must(t, ix.Close())
			tc.damage(t, path, jobs[1].ID)

			ix = openIndex(t, path)
			unfinished, err := ix.UnfinishedJobs()
			if err != nil || len(unfinished) != 1 || unfinished[0].ID != jobs[0].ID {
				t.Fatalf("UnfinishedJobs with %s's record unreadable = %+v, %v; want %s alone", jobs[1].ID, unfinished, err, jobs[0].ID)
			}
			bad, err := ix.UnreadableRecords()
			if err != nil || len(bad) != 1 || bad[0].Bucket != "jobs" || bad[0].Key != jobs[1].ID {
				t.Fatalf("UnreadableRecords = %+v, %v; want the job %s's", bad, err, jobs[1].ID)
			}
			must(t, ix.DropRecords(bad))
			if bad, err := ix.UnreadableRecords(); err != nil || len(bad) != 0 {
				t.Fatalf("UnreadableRecords after DropRecords = %+v, %v", bad, err)
			}
			if list, err := ix.Jobs(10); err != nil || len(list) != 1 || list[0].ID != jobs[0].ID {
				t.Fatalf("Jobs after the drop = %+v, %v; want %s alone", list, err, jobs[0].ID)
			}
			must(t, ix.Close())
			// Its images went with it.
			db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
			must(t, err)
			defer db.Close()
			must(t, db.View(func(tx *bolt.Tx) error {
				if tx.Bucket([]byte("job_images")).Bucket([]byte(jobs[1].ID)) != nil {
					t.Errorf("the images of the dropped job %s are still in the index", jobs[1].ID)
				}
				return nil
			}))
		})
	}
}

// A job whose header cannot be read (a flipped bit), which the start
// passes over, failed every new job's record (the pruning of the old
// finished jobs read it): every prefetch and every sync failed until the
// mirror was stopped and verify --repair run. It is kept, as an
// unfinished job is, for verify --repair to drop, and new jobs go on.
func TestNewJobBesideAnUnreadableOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	old := &storage.Job{ID: "20250304T050607-aaaaaaaaaa", Trigger: "sync", State: storage.JobDone, Images: []storage.JobImage{{Image: "a", State: storage.JobDone}}, CreatedAt: t0, UpdatedAt: t0}
	must(t, ix.PutJob(old))
	must(t, ix.Close())
	fixture.DamageRecord(t, path, "jobs", old.ID)

	ix = openIndex(t, path)
	defer ix.Close()
	j := &storage.Job{ID: "20250304T050608-bbbbbbbbbb", Trigger: "sync", State: storage.JobQueued, Images: []storage.JobImage{{Image: "b", State: storage.JobQueued}}, CreatedAt: t0, UpdatedAt: t0}
	if err := ix.PutJob(j); err != nil {
		t.Fatalf("PutJob beside a job whose record cannot be read: %v", err)
	}
	if got, ok, err := ix.Job(j.ID); err != nil || !ok || len(got.Images) != 1 {
		t.Fatalf("Job(%s) = %+v, %v, %v; want it recorded", j.ID, got, ok, err)
	}
	if bad, err := ix.UnreadableRecords(); err != nil || len(bad) != 1 || bad[0].Key != old.ID {
		t.Fatalf("UnreadableRecords = %+v, %v; want %s's, for verify --repair", bad, err, old.ID)
	}
}

// A job whose header or an image's record cannot be read (a flipped bit)
// failed the lists of the latest jobs it was among: GET /prefetch
// answered 500 and the status page's jobs failed until the mirror was
// stopped and verify --repair run. They pass over it, as a start does.
func TestJobListsPassOverAnUnreadableJob(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	jobs := []*storage.Job{
		{ID: "20250304T050607-aaaaaaaaaa", Trigger: "sync", State: storage.JobDone, Images: []storage.JobImage{{Image: "a", State: storage.JobDone}}, CreatedAt: t0, UpdatedAt: t0},
		{ID: "20250304T050608-bbbbbbbbbb", Trigger: "sync", State: storage.JobDone, Images: []storage.JobImage{{Image: "b", State: storage.JobDone}}, CreatedAt: t0, UpdatedAt: t0},
	}
	for _, j := range jobs {
		must(t, ix.PutJob(j))
	}
	must(t, ix.Close())
	fixture.DamageRecord(t, path, "jobs", jobs[1].ID)

	ix = openIndex(t, path)
	defer ix.Close()
	if list, err := ix.Jobs(10); err != nil || len(list) != 1 || list[0].ID != jobs[0].ID {
		t.Errorf("Jobs with %s's record unreadable = %+v, %v; want %s alone", jobs[1].ID, list, err, jobs[0].ID)
	}
	if list, err := ix.JobHeaders(10); err != nil || len(list) != 1 || list[0].ID != jobs[0].ID {
		t.Errorf("JobHeaders with %s's record unreadable = %+v, %v; want %s alone", jobs[1].ID, list, err, jobs[0].ID)
	}
}

// A job another replica runs, whose clock is behind (by a quarter of an
// hour here: a node whose time drifted), reads as running on this one
// while that replica rewrites it, and as lost once it has not been
// rewritten for JobLost: a job is lost by how long this replica has seen
// it unchanged, not by the other's clock, which made it read as failed,
// lost, from its first minute.
func TestSharedJobOfAReplicaWhoseClockIsBehind(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	now := t0
	reader := openSkewed(t, r, &now, 0)
	writer := openSkewed(t, r, &now, -15*time.Minute)
	behind := t0.Add(-15 * time.Minute)
	j := &storage.Job{ID: "20250304T050607-aaaaaaaaaa", Trigger: "prefetch", State: storage.JobRunning, CreatedAt: behind, UpdatedAt: behind,
		Images: []storage.JobImage{{Image: "image", State: storage.JobRunning}}}
	must(t, writer.PutJob(j))
	state := func() string {
		t.Helper()
		got, ok, err := reader.Job(j.ID)
		if err != nil || !ok {
			t.Fatalf("Job = %+v, %v, %v", got, ok, err)
		}
		return got.State
	}
	if s := state(); s != storage.JobRunning {
		t.Fatalf("a job its replica just wrote reads %q; want running", s)
	}
	// Rewritten at every beat: running.
	for range 15 {
		now = now.Add(storage.JobBeat)
		h := *j
		h.Images, h.UpdatedAt = nil, now.Add(-15*time.Minute)
		must(t, writer.BeatJob(&h))
		if s := state(); s != storage.JobRunning {
			t.Fatalf("a job rewritten a beat ago reads %q; want running", s)
		}
	}
	// Its replica gone: lost once not rewritten for JobLost.
	now = now.Add(storage.JobLost - storage.JobBeat)
	if s := state(); s != storage.JobRunning {
		t.Fatalf("a job not rewritten for %v reads %q; want running still", storage.JobLost-storage.JobBeat, s)
	}
	now = now.Add(2 * storage.JobBeat)
	if s := state(); s != storage.JobFailed {
		t.Errorf("a job not rewritten for %v reads %q; want failed, lost", storage.JobLost+storage.JobBeat, s)
	}
}
