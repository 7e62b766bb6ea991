package status_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The status lists the last jobs without every image of each: a sync of
// a few hundred images every few minutes (or prefetches of up to
// prefetch_max_images, 1,000) would otherwise put every image of 20 jobs
// into each answer, and into the page every open browser reloads every 5
// seconds. Each job shows its counts and a few images, those not done
// first; GET /prefetch/<id> has them all.
func TestStatusOfLargeJobs(t *testing.T) {
	m, h := pageServer(t, synthetic(1))
	const jobs, images = 20, 1000
	at := m.Clock.Now()
	for j := range jobs {
		job := &storage.Job{ID: fmt.Sprintf("20260101-%04d", j), Trigger: "sync", State: storage.JobDone, CreatedAt: at, UpdatedAt: at}
		for i := range images {
			im := storage.JobImage{Image: fmt.Sprintf("ghcr.io/team/service-%04d:1.27.%d", i, j), State: storage.JobDone,
				Digest: "sha256:" + fmt.Sprintf("%064x", i), PlatformsDone: []string{"linux/amd64", "linux/arm64"}, PlatformsTotal: 2,
				BytesDone: 80 << 20, BytesTotal: 80 << 20}
			if j == jobs-1 && i == images-1 {
				job.State = storage.JobFailed
				im.State, im.Error, im.PlatformsDone, im.BytesDone = storage.JobFailed, "upstream ghcr.io answered 500 for the manifest", nil, 0
			}
			job.Images = append(job.Images, im)
		}
		at = at.Add(5 * time.Minute)
		if err := m.Index.PutJob(job); err != nil {
			t.Fatal(err)
		}
	}
	const most = 256 << 10
	rec := serveGet(t, h, "/api/v1/status")
	if rec.Code != http.StatusOK || rec.Body.Len() > most {
		t.Errorf("GET /api/v1/status: %d, %d bytes, want at most %d", rec.Code, rec.Body.Len(), most)
	}
	var s status.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Jobs) != jobs {
		t.Fatalf("%d jobs, want %d", len(s.Jobs), jobs)
	}
	last := s.Jobs[0]
	if last.State != storage.JobFailed || len(last.Images) == 0 || last.Images[0].State != storage.JobFailed || last.Images[0].Error == "" {
		t.Errorf("the failed job's first image %+v, want its failed one", last.Images[:min(1, len(last.Images))])
	}
	for _, page := range []string{"/", "/?live=1"} {
		if rec := serveGet(t, h, page); rec.Code != http.StatusOK || rec.Body.Len() > most {
			t.Errorf("GET %s: %d, %d bytes, want at most %d", page, rec.Code, rec.Body.Len(), most)
		}
	}
}

// Each poll of the status decoded every image of its 20 jobs, to show 10
// of each: 20 syncs of 1,000 images cost 260,000 allocations (20 MB) a
// poll, every 5 s for each open page. A finished job does not change: its
// summary is read once, and a poll reads the jobs' headers.
func TestStatusReadsFinishedJobsOnce(t *testing.T) {
	m, h := pageServer(t, synthetic(1))
	const jobs, images = 20, 1000
	at := m.Clock.Now()
	for j := range jobs {
		job := &storage.Job{ID: fmt.Sprintf("20260101-%04d", j), Trigger: "sync", State: storage.JobDone, CreatedAt: at, UpdatedAt: at}
		for i := range images {
			job.Images = append(job.Images, storage.JobImage{Image: fmt.Sprintf("ghcr.io/team/service-%04d:1.27.%d", i, j), State: storage.JobDone,
				Digest: "sha256:" + fmt.Sprintf("%064x", i), PlatformsDone: []string{"linux/amd64"}, PlatformsTotal: 1})
		}
		if err := m.Index.PutJob(job); err != nil {
			t.Fatal(err)
		}
	}
	var s status.Status
	if err := json.Unmarshal(serveGet(t, h, "/api/v1/status").Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Jobs) != jobs || s.Jobs[0].ImagesTotal != images || s.Jobs[0].ImageStates[storage.JobDone] != images || len(s.Jobs[0].Images) != 10 {
		t.Fatalf("%d jobs, the first %+v", len(s.Jobs), s.Jobs[0].ImageStates)
	}
	const most = 20_000
	if n := testing.AllocsPerRun(5, func() { serveGet(t, h, "/api/v1/status") }); n > most {
		t.Errorf("%.0f allocations a poll of the status, want at most %d", n, most)
	}
	// A job started since is shown.
	job := &storage.Job{ID: "20260102-0000", Trigger: "prefetch", State: storage.JobDone, CreatedAt: at, UpdatedAt: at,
		Images: []storage.JobImage{{Image: "nginx:1.27", State: storage.JobFailed, Error: "boom"}}}
	if err := m.Index.PutJob(job); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(serveGet(t, h, "/api/v1/status").Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Jobs) != jobs || s.Jobs[0].ID != job.ID || s.Jobs[0].ImagesTotal != 1 || s.Jobs[0].Images[0].Error != "boom" {
		t.Errorf("after a new job: %d jobs, the first %+v", len(s.Jobs), s.Jobs[0])
	}
}
