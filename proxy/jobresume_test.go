package proxy

import (
	"io"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A prefetch job resumed after a restart goes on with the images it had
// not finished, and keeps the result of those it had: an image that had
// failed before the restart stays failed with its error, the upstream not
// asked for it again, and the job ends failed. Before, the resumed job
// fetched it again: its failure was counted twice when it failed again,
// and lost (the job done) when the upstream had meanwhile put it right.
func TestResumedJobKeepsImagesFinishedBeforeTheRestart(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	pushImage(t, reg, "library/app:1", 1)
	pushImage(t, reg, "library/app:2", 1)
	pushImage(t, reg, "library/app:3", 1)
	var again atomic.Int64 // requests for the images finished before the restart
	p := inProcessMirror(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/1") || strings.HasSuffix(r.URL.Path, "/manifests/2") {
			again.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	defer p.Close()
	// What a run stopped by a shutdown after its first two images left:
	// the first failed (the upstream failing then), the second done.
	const failure = "upstream docker.io answered 500 for manifest library/app:1"
	at := time.Unix(1700000000, 0).UTC()
	job := &storage.Job{ID: "20231114T221320-resumed", Trigger: "prefetch", State: storage.JobRunning,
		Images: []storage.JobImage{
			{Image: "library/app:1", State: storage.JobFailed, Error: failure},
			{Image: "library/app:2", State: storage.JobDone},
			{Image: "library/app:3", State: storage.JobQueued},
		},
		CreatedAt: at, UpdatedAt: at}
	if err := p.index.PutJob(job); err != nil {
		t.Fatal(err)
	}

	if err := p.ResumeJobs(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	j, ok, err := p.index.Job(job.ID)
	if err != nil || !ok {
		t.Fatalf("the resumed job: %v, %v", ok, err)
	}
	if j.State != storage.JobFailed {
		t.Errorf("the resumed job ended %s, want failed: an image had failed before the restart", j.State)
	}
	if img := j.Images[0]; img.State != storage.JobFailed || img.Error != failure {
		t.Errorf("the image failed before the restart: %s %q, want failed %q", img.State, img.Error, failure)
	}
	if img := j.Images[2]; img.State != storage.JobDone {
		t.Errorf("the image not fetched before the restart: %s %q, want done", img.State, img.Error)
	}
	if n := again.Load(); n != 0 {
		t.Errorf("the upstream was asked %d times for the images finished before the restart, want none", n)
	}
}
