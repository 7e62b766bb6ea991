package proxy

import (
	"context"
	"io"
	"log"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/google/go-containerregistry/pkg/registry"
)

// slowSyncProxy is a mirror (on a synctest bubble's clock) of an upstream
// holding library/a:1, whose manifest takes 90 minutes to send.
func slowSyncProxy(t *testing.T, opts ...Option) *Proxy {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	pushImage(t, reg, "library/a:1", 1)
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/1") {
			time.Sleep(90 * time.Minute)
		}
		reg.ServeHTTP(w, r)
	})
	return inProcessMirror(t, slow, append([]Option{WithFillTimeout(3 * time.Hour)}, opts...)...)
}

// unfinishedSyncJobs counts the sync jobs recorded as queued or running.
func unfinishedSyncJobs(t *testing.T, p *Proxy) int {
	t.Helper()
	jobs, err := p.index.Jobs(100)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, j := range jobs {
		if j.Trigger == "sync" && !j.Finished() {
			n++
		}
	}
	return n
}

// A sync run is not started while the last one is still going: one that
// takes longer than the interval, or one a restart left unfinished and
// ResumeJobs resumed. Before, each tick (and each start) began another
// job over the same images beside it.
func TestSyncRunsOneAtATime(t *testing.T) {
	t.Run("longer than the interval", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := slowSyncProxy(t)
			defer p.Close()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go p.RunSync(ctx, Sync{Images: []string{"a:1"}}, time.Hour)
			// The first run's image takes 90 minutes: the tick at one
			// hour comes while it runs.
			time.Sleep(61 * time.Minute)
			synctest.Wait()
			if n := unfinishedSyncJobs(t, p); n != 1 {
				t.Errorf("%d sync jobs running after the first tick, want 1", n)
			}
			cancel()
		})
	})
	t.Run("resumed at start", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := slowSyncProxy(t)
			defer p.Close()
			// A sync job the last process left running.
			job := &storage.Job{ID: newJobID(p.now()), Trigger: "sync", State: storage.JobRunning,
				Images: []storage.JobImage{{Image: "a:1", State: storage.JobRunning}}, CreatedAt: p.now(), UpdatedAt: p.now()}
			if err := p.index.PutJob(job); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			// As server.Start does: the unfinished jobs, then the sync.
			if err := p.ResumeJobs(ctx); err != nil {
				t.Fatal(err)
			}
			go p.RunSync(ctx, Sync{Images: []string{"a:1"}}, time.Hour)
			time.Sleep(time.Minute)
			synctest.Wait()
			if n := unfinishedSyncJobs(t, p); n != 1 {
				t.Errorf("%d sync jobs running after a restart, want 1 (the resumed one)", n)
			}
			cancel()
		})
	})
}

// owning is a cluster in which this replica owns every key, or none.
type owning struct {
	Peers
	owns bool
}

func (o owning) Owns(string) bool { return o.owns }

// Manifest lets this replica fetch every manifest itself.
func (owning) Manifest(context.Context, string, string, string, oci.Ref) (*upstream.Manifest, bool, error) {
	return nil, false, nil
}

// In a cluster, only the replica that owns the sync runs it: every
// replica started the same job, each run.
func TestSyncRunsOnItsOwner(t *testing.T) {
	for _, owns := range []bool{true, false} {
		synctest.Test(t, func(t *testing.T) {
			p := slowSyncProxy(t, WithPeers(owning{owns: owns}))
			defer p.Close()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go p.RunSync(ctx, Sync{Images: []string{"a:1"}}, time.Hour)
			time.Sleep(time.Minute)
			synctest.Wait()
			want := 0
			if owns {
				want = 1
			}
			if n := unfinishedSyncJobs(t, p); n != want {
				t.Errorf("owns the sync %v: %d sync jobs running, want %d", owns, n, want)
			}
			cancel()
		})
	}
}
