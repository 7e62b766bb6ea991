package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
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
