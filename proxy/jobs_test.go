package proxy

import (
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/google/go-containerregistry/pkg/registry"
)

// benchProxy is a proxy on a fresh index, for the job records.
func benchProxy(b *testing.B) *Proxy {
	b.Helper()
	index, err := storage.OpenIndex(filepath.Join(b.TempDir(), "index.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { index.Close() })
	up, err := upstream.New(DefaultHost, "http://127.0.0.1:1")
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(nil, index, []*upstream.Client{up}, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p
}

// BenchmarkJobStateChanges records the state changes of a prefetch job of
// n images as runJob makes them: the job running, each image running then
// done, the job done. Linear cost means a constant ns per image.
func BenchmarkJobStateChanges(b *testing.B) {
	for _, n := range []int{500, 1000, 2000} {
		b.Run(fmt.Sprintf("images=%d", n), func(b *testing.B) {
			p := benchProxy(b)
			b.ReportAllocs()
			run := 0
			for b.Loop() {
				run++
				job := &storage.Job{ID: fmt.Sprintf("bench-%d", run), Trigger: "prefetch", State: storage.JobQueued, CreatedAt: p.now(), UpdatedAt: p.now()}
				for i := range n {
					job.Images = append(job.Images, storage.JobImage{Image: fmt.Sprintf("library/image-%d:latest", i), State: storage.JobQueued})
				}
				if err := p.index.PutJob(job); err != nil {
					b.Fatal(err)
				}
				p.setJob(job, func() { job.State = storage.JobRunning })
				for i := range job.Images {
					p.setImage(job, i, func(img *storage.JobImage) { img.State = storage.JobRunning })
					p.setImage(job, i, func(img *storage.JobImage) {
						img.State, img.Digest = storage.JobDone, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
					})
				}
				p.setJob(job, func() { job.State = storage.JobDone })
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/image")
		})
	}
}

// inProcess is a transport that answers from a handler in the process:
// no network, so a synctest bubble's clock moves whenever the handler
// waits.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	sr := r.Clone(r.Context())
	if sr.Body == nil {
		sr.Body = http.NoBody // as a server's request has
	}
	t.h.ServeHTTP(rec, sr)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// inProcessMirror is a mirror, with referrers off, of Docker Hub as the
// handler h answers it in the process (inProcess).
func inProcessMirror(t *testing.T, h http.Handler, opts ...Option) *Proxy {
	t.Helper()
	return transportMirror(t, inProcess{h}, nil, opts...)
}

// transportMirror is inProcessMirror of the upstream rt answers for, on
// store (nil: one in memory).
func transportMirror(t *testing.T, rt http.RoundTripper, store storage.Store, opts ...Option) *Proxy {
	t.Helper()
	up, err := upstream.New(DefaultHost, "http://registry.test", upstream.WithTransport(rt))
	if err != nil {
		t.Fatal(err)
	}
	mem, index := memStore(t)
	if store == nil {
		store = mem
	}
	p, err := New(store, index, []*upstream.Client{up}, append([]Option{WithSpoolDir(t.TempDir()),
		WithReferrers(false), WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A prefetch job gives each image the time of one fill, not the whole
// job: three images of 40 minutes each (on a bubble's clock) all finish,
// though the job takes two hours against a fill timeout of one. Before,
// the job stopped at the hour and was shown running until a restart.
func TestPrefetchJobLongerThanAFill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		for _, name := range []string{"a", "b", "c"} {
			pushImage(t, reg, "library/"+name+":1", 1)
		}
		slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/manifests/1") {
				time.Sleep(40 * time.Minute) // an image that takes long
			}
			reg.ServeHTTP(w, r)
		})
		p := inProcessMirror(t, slow, WithFillTimeout(time.Hour))
		defer p.Close()
		job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{"a:1", "b:1", "c:1"}}, "prefetch")
		if err != nil {
			t.Fatal(err)
		}
		// The bubble's clock: three hours pass at once, as soon as every
		// goroutine waits for them; the job's go by meanwhile.
		time.Sleep(3 * time.Hour)
		synctest.Wait()
		got, err := p.Job(job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != storage.JobDone {
			t.Fatalf("job %s after two hours of one-hour fills; images: %+v", got.State, got.Images)
		}
	})
}
