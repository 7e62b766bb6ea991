//go:build e2e

package crash

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestPrefetchResumedAfterSIGKILLTakesBackItsPin kills the mirror while a
// prefetch with "pin": true copies its image, and restarts it: the
// resumed copy fails too, and takes back the pin the first run made. It
// found the pin recorded, took it for someone else's and left it: the
// image, never stored, stayed pinned for ever.
func TestPrefetchResumedAfterSIGKILLTakesBackItsPin(t *testing.T) {
	binary(t)
	up := fixture.StartUpstream(t)
	im := up.SeedImage(t, "library/app", "v1", 1, 64<<10)
	layer := im.Layers[0]
	// Every answer of the layer is corrupt, so every copy fails; the
	// first is held until the mirror has been killed.
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: layer, Corrupt: true})
	gate := up.GateBlob(layer, 1<<10)
	data, logs := t.TempDir(), t.TempDir()
	p := startMirror(t, logs, data, up.URL())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.URL()+"/prefetch", strings.NewReader(`{"images":["library/app:v1"],"pin":true}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var job storage.Job
	err = json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /prefetch: %s, %v", resp.Status, err)
	}
	select {
	case <-gate.Reached():
	case <-ctx.Done():
		t.Fatalf("the prefetch never reached the layer\nlog:\n%s", p.log())
	}
	p.kill()
	gate.Open()

	p = startMirror(t, logs, data, up.URL()) // resumes the job
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !job.Finished() {
		select {
		case <-ctx.Done():
			t.Fatalf("the resumed prefetch did not end: %+v\nlog:\n%s", job, p.log())
		case <-tick.C:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/prefetch/"+job.ID, nil)
		resp, err := p.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&job)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("GET /prefetch/%s: %s, %v", job.ID, resp.Status, err)
		}
	}
	if job.State != storage.JobFailed {
		t.Fatalf("resumed job %+v, want it failed", job)
	}
	if code := p.terminate(time.Minute); code != 0 {
		t.Fatalf("exit status %d after SIGTERM\nlog:\n%s", code, p.log())
	}
	ix, err := storage.OpenIndex(filepath.Join(data, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	pins, err := ix.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if len(pins) != 0 {
		t.Errorf("pins %v after the resumed prefetch failed; want the pin it made taken back", pins)
	}
}
