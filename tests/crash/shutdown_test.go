//go:build e2e

package crash

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// TestGracefulShutdown sends SIGTERM while a client is reading a blob the
// proxy is still downloading from a slow upstream: new connections are
// refused from then on, the client still gets the whole blob with the
// right digest, the process exits 0, and after a restart with the upstream
// stopped the blob is served from the store; nothing half-written is left.
func TestGracefulShutdown(t *testing.T) {
	binary(t)
	up := fixture.StartUpstream(t)
	const repo = "crash/big"
	img := up.SeedImage(t, repo, "v1", 1, 4<<20)
	cat := newCatalog()
	cat.addSingle(t, up, repo, "v1", img)
	layer := cat.byDigest[img.Layers[0]]
	up.ResetCounts()
	up.SetThrottle(fixture.Throttle{BytesPerSec: 2 << 20}) // about 2s for the layer

	data, logs := t.TempDir(), t.TempDir()
	p := startMirror(t, logs, data, up.URL(), "--shutdown-timeout", "5m")

	// The client has its own connection, opened before the signal.
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/v2/"+repo+"/blobs/"+layer.digest, nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET blob: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(layer.data)) {
		t.Fatalf("GET blob: %s, Content-Length %d, want 200 and %d", resp.Status, resp.ContentLength, len(layer.data))
	}
	head := make([]byte, 256<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("reading the first %d bytes: %v", len(head), err)
	}

	// Mid-read (the client reads no more until new connections are
	// refused): SIGTERM.
	sentAtSignal := up.BlobBytesFor(layer.digest)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	waitRefused(t, p.addr, 30*time.Second)
	fresh := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	if r, err := fresh.Get(p.URL() + "/healthz"); err == nil {
		r.Body.Close()
		t.Errorf("a new request after SIGTERM was answered: %s", r.Status)
	}

	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("the download in flight at SIGTERM broke after %d of %d bytes: %v", len(head)+len(rest), len(layer.data), err)
	}
	body := append(head, rest...)
	if got := sha(body); got != layer.digest || !bytes.Equal(body, layer.data) {
		t.Errorf("the download in flight at SIGTERM: %d bytes hashing to %s, want %d bytes of %s", len(body), got, len(layer.data), layer.digest)
	}
	if code := p.waitExit(time.Minute); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0\nlog:\n%s", code, p.log())
	}
	t.Logf("SIGTERM when the client had read %d KiB and the upstream had sent %d of %d KiB",
		len(head)>>10, sentAtSignal>>10, len(layer.data)>>10)
	for _, line := range p.errorLines() {
		t.Errorf("docker-mirror logged an error: %s", line)
	}

	// Nothing half-written: the store holds the verified blob, indexed.
	s := inspect(t, data, cat)
	if len(s.leftovers) > 0 {
		t.Errorf("temporary files left after a graceful shutdown: %v", s.leftovers)
	}
	if _, ok := s.stored[layer.digest]; !ok {
		t.Errorf("the blob downloaded during the shutdown is not in the store")
	}
	if _, ok := s.blobs[layer.digest]; !ok {
		t.Errorf("the blob downloaded during the shutdown is not in the index")
	}

	// Served from the store without the upstream.
	up.Stop()
	p = startMirror(t, logs, data, up.URL(), "--shutdown-timeout", "5m")
	c := newChecker(t, p, cat)
	if !c.fetch(context.Background(), "blobs", layer.digest, layer, "hit") {
		t.Errorf("the blob is not served after the restart with the upstream stopped\nlog:\n%s", p.log())
	}
	if code := p.terminate(time.Minute); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0\nlog:\n%s", code, p.log())
	}
	if n := up.Count(http.MethodGet, fixture.KindBlob); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
}

// waitRefused dials addr until the connection is refused.
func waitRefused(t testing.TB, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return
		case errors.Is(err, syscall.ECONNRESET):
			// Queued for accept when the listener closed: not refused
			// yet, but closing. Dial again.
		case err != nil:
			t.Fatalf("dialing %s after SIGTERM: %v", addr, err)
		default:
			conn.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections %v after SIGTERM (%s dials)", addr, within, strconv.Itoa(n))
		}
		<-tick.C
	}
}

// A second SIGTERM during a graceful shutdown ends the process at once:
// an operator (or a Ctrl-C pressed twice) need not wait out the shutdown
// timeout for a client that is not reading, nor reach for SIGKILL. The
// data directory then starts as after any crash, and the blob whose
// download it cut is served whole.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	binary(t)
	up := fixture.StartUpstream(t)
	const repo = "crash/held"
	img := up.SeedImage(t, repo, "v1", 1, 1<<20)
	cat := newCatalog()
	cat.addSingle(t, up, repo, "v1", img)
	layer := cat.byDigest[img.Layers[0]]

	data, logs := t.TempDir(), t.TempDir()
	p := startMirror(t, logs, data, up.URL(), "--shutdown-timeout", "1h")
	// The download stops part-way until the test ends: the client's
	// request stays in flight, and a graceful shutdown waits for it.
	gate := up.GateBlob(layer.digest, 256<<10)
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL()+"/v2/"+repo+"/blobs/"+layer.digest, nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("GET blob: %v", err)
	}
	defer resp.Body.Close()
	<-gate.Reached()

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	waitRefused(t, p.addr, 30*time.Second) // the first is taken: shutting down
	// The second: the process ends now, not in an hour (the bound only
	// guards against a hang).
	p.terminate(time.Minute)
	gate.Open()

	p = startMirror(t, logs, data, up.URL(), "--shutdown-timeout", "5m")
	c := newChecker(t, p, cat)
	if !c.fetch(context.Background(), "blobs", layer.digest, layer) {
		t.Errorf("the blob is not served whole after the restart\nlog:\n%s", p.log())
	}
	if code := p.terminate(time.Minute); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0\nlog:\n%s", code, p.log())
	}
}
