package proxy

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/storage"
)

// A running job whose record a collection dropped (one of its image
// records could not be read: a flipped bit on the disk, DropRecords) was
// recorded again with the images changed after the drop alone: once it
// ended, GET /prefetch/{id} listed the images still to copy at the drop,
// the first ones missing and the rest at their positions, and a restart
// resumed that. It is recorded again whole.
func TestRunningJobDroppedIsRecordedAgainWhole(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	images := []string{"library/a:v1", "library/b:v1", "library/c:v1"}
	for _, im := range images {
		pushImage(t, reg, im, 1)
	}
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	held := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/library/b/blobs/") {
			once.Do(func() { close(reached) })
			<-release
		}
		reg.ServeHTTP(w, r)
	})
	p := inProcessMirror(t, held)
	defer p.Close()
	job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: images}, "prefetch")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	select {
	case <-reached:
	case <-ctx.Done():
		close(release)
		t.Fatal("the prefetch never fetched b's blobs")
	}
	// A bit flips in a's record (done) on the disk, which the index maps:
	// a collection meeting an unreadable record drops every one it lists.
	flipRecords(t, p.index.Path(), []byte(`{"image":"library/a:v1"`))
	bad, err := p.index.UnreadableRecords()
	if err != nil || len(bad) != 1 || bad[0].Bucket != "jobs" || bad[0].Key != job.ID {
		close(release)
		t.Fatalf("UnreadableRecords = %+v, %v; want the job %s's", bad, err, job.ID)
	}
	if err := p.index.DropRecords(bad); err != nil {
		close(release)
		t.Fatal(err)
	}
	close(release)
	if err := p.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	got, ok, err := p.index.Job(job.ID)
	if err != nil || !ok || got.State != storage.JobDone || len(got.Images) != len(images) {
		t.Fatalf("the job's record once it ended: %+v, %v, %v; want it done with its %d images", got, ok, err, len(images))
	}
	for i, img := range got.Images {
		if img.Image != images[i] || img.State != storage.JobDone {
			t.Errorf("image %d recorded: %s %s; want %s done", i, img.Image, img.State, images[i])
		}
	}
}

// flipRecords overwrites the first byte of every copy of the record
// beginning with prefix in the bbolt file at path, in place, as a bit
// flipped on the disk would (the index maps the file: its reads see it).
func flipRecords(t *testing.T, path string, prefix []byte) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for off := 0; ; n++ {
		i := bytes.Index(raw[off:], prefix)
		if i < 0 {
			break
		}
		if _, err := f.WriteAt([]byte{0x01}, int64(off+i)); err != nil {
			t.Fatal(err)
		}
		off += i + 1
	}
	if n == 0 {
		t.Fatalf("no record %q in %s", prefix, path)
	}
}
