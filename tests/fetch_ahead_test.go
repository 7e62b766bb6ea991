package tests

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// gateAll holds every blob of img on the upstream after its first byte.
func gateAll(up *fixture.Upstream, img *fixture.Image) map[string]*fixture.Gate {
	gates := map[string]*fixture.Gate{}
	for _, b := range img.Blobs() {
		gates[b] = up.GateBlob(b, 1)
	}
	return gates
}

// reached reports the digest of each gate once it is reached.
func reached(t *testing.T, gates map[string]*fixture.Gate) <-chan string {
	ch := make(chan string, len(gates))
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	for d, g := range gates {
		go func() {
			select {
			case <-g.Reached():
				ch <- d
			case <-done:
			}
		}()
	}
	return ch
}

// waitReached waits for n more gates of ch and records them in seen. A
// watchdog turns a mirror that never asks into a failure, not a hung test.
func waitReached(t *testing.T, ch <-chan string, seen map[string]bool, n int) {
	t.Helper()
	watchdog := time.NewTimer(time.Minute)
	defer watchdog.Stop()
	for i := range n {
		select {
		case d := <-ch:
			seen[d] = true
		case <-watchdog.C:
			t.Fatalf("%d of %d expected blob downloads never reached the upstream", n-i, n)
		}
	}
}

// Getting an image manifest starts every blob it lists at once, even with
// a background fill that fetches one at a time; once idle, each blob was
// fetched from the upstream exactly once and is stored.
func TestFetchAheadStartsEveryBlob(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/ahead", "v1", 4, 8<<10)
	m := servertest.Start(t, up.URL(), proxy.WithConcurrency(1))
	gates := gateAll(up, img)

	wantManifest(t, get(t, m.URL()+"/v2/ahead/manifests/v1"), img.Manifest, img.MediaType)
	// All five are held by the upstream at once: none was waiting for
	// another to finish.
	waitReached(t, reached(t, gates), map[string]bool{}, len(gates))
	for _, g := range gates {
		g.Open()
	}
	m.WaitIdle()
	for _, b := range img.Blobs() {
		if n := blobGets(up, b); n != 1 {
			t.Errorf("blob %s fetched %d times, want 1", b, n)
		}
	}
	before := up.Count(http.MethodGet, fixture.KindBlob)
	for _, b := range img.Blobs() {
		wantBlob(t, m, "ahead", b)
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob) - before; n != 0 {
		t.Errorf("pulling the fetched-ahead blobs cost %d more upstream GETs", n)
	}
}

// Fetching ahead is bounded by the upstream's connection budget, which the
// background fill shares: with a budget of 2, two blobs are downloading and
// the others wait. A client asking for a waiting blob is not queued behind
// the budget: its request goes out at once and joins the download, so the
// upstream serves each blob once.
func TestFetchAheadBudget(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/budget", "v1", 4, 8<<10)
	m := servertest.Start(t, up.URL(), proxy.WithUpstreamConnections(2), proxy.WithConcurrency(8))
	gates := gateAll(up, img)

	wantManifest(t, get(t, m.URL()+"/v2/budget/manifests/v1"), img.Manifest, img.MediaType)
	seen := map[string]bool{}
	ch := reached(t, gates)
	waitReached(t, ch, seen, 2)

	// A client asks for a blob still waiting for the budget.
	var waiting string
	for _, b := range img.Blobs() {
		if !seen[b] {
			waiting = b
			break
		}
	}
	type answer struct {
		r   response
		err error
	}
	got := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.URL()+"/v2/budget/blobs/"+waiting, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		got <- answer{r: response{status: resp.StatusCode, header: resp.Header, body: body}, err: err}
	}()
	waitReached(t, ch, seen, 1)
	if !seen[waiting] {
		t.Fatal("a blob the client did not ask for went out beyond the budget")
	}
	// Two within the budget, and the client's: the other two still wait.
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 3 {
		t.Errorf("%d blob downloads at once, want 2 within the budget + 1 a client waits for", n)
	}

	for _, g := range gates {
		g.Open()
	}
	a := <-got
	if a.err != nil || a.r.status != http.StatusOK || sha(a.r.body) != waiting {
		t.Fatalf("client's blob: status %d, error %v", a.r.status, a.err)
	}
	if c := a.r.header.Get("X-Cache"); c != "miss" {
		t.Errorf("client's blob X-Cache %q, want miss (it joined the download)", c)
	}
	m.WaitIdle()
	for _, b := range img.Blobs() {
		if n := blobGets(up, b); n != 1 {
			t.Errorf("blob %s fetched %d times, want 1", b, n)
		}
	}
}

// A blob fetched ahead is the mirror's own download: a client that joins
// it and hangs up does not cancel it, and it is stored once.
func TestFetchAheadSurvivesClientHangUp(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/hangup", "v1", 1, 64<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	// Held after 32 KiB: enough for the mirror to send the client its
	// headers and first bytes (it holds back the last byte spooled).
	gate := up.GateBlob(layer, 32<<10)

	wantManifest(t, get(t, m.URL()+"/v2/hangup/manifests/v1"), img.Manifest, img.MediaType)
	waitReached(t, reached(t, map[string]*fixture.Gate{layer: gate}), map[string]bool{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.URL()+"/v2/hangup/blobs/"+layer, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.Header.Get("X-Cache"); c != "miss" {
		t.Errorf("X-Cache %q while downloading, want miss", c)
	}
	cancel()
	resp.Body.Close()
	gate.Open()
	m.WaitIdle()
	before := up.Count(http.MethodGet, fixture.KindBlob)
	wantBlob(t, m, "hangup", layer)
	if n := blobGets(up, layer); n != 1 || up.Count(http.MethodGet, fixture.KindBlob) != before {
		t.Errorf("layer fetched %d times, want 1 (stored despite the hang-up)", n)
	}
}
