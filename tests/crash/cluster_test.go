//go:build e2e

package crash

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/cluster"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// startReplicas starts n `docker-mirror serve` processes of one cluster,
// each with its own data directory, all on one filesystem store in a
// shared directory, each listing all as peers, and waits until each is
// ready.
func startReplicas(t *testing.T, upstream string, n int) []*mirrorProc {
	t.Helper()
	bin := binary(t)
	logDir, shared := t.TempDir(), t.TempDir()
	lns := make([]net.Listener, n)
	urls := make([]string, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i], urls[i] = ln, "http://"+ln.Addr().String()
	}
	for _, ln := range lns {
		ln.Close() // the children listen there
	}
	ps := make([]*mirrorProc, n)
	for i := range n {
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		yaml := fmt.Sprintf("storage: {filesystem: {rootdirectory: %q}}\ncluster: {self: %q, peers: [%s]}\n",
			shared, urls[i], `"`+strings.Join(urls, `", "`)+`"`)
		if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		ps[i] = startReplica(t, bin, strings.TrimPrefix(urls[i], "http://"), upstream, cfg, filepath.Join(logDir, fmt.Sprintf("replica-%d.log", i)))
	}
	// A replica that probed the others before they listened has them
	// down until its next probe (every 5s): wait until each sees all up.
	for _, p := range ps {
		p.waitPeersUp(n-1, time.Minute)
	}
	return ps
}

// waitPeersUp polls /metrics until the replica counts n peers up.
func (p *mirrorProc) waitPeersUp(n int, within time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		m, err := p.metrics()
		if err == nil && m["docker_mirror_cluster_peer_up"] == float64(n) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: not %d peers up within %v (%v, %v)\nlog:\n%s", p.URL(), n, within, m["docker_mirror_cluster_peer_up"], err, p.log())
		}
		<-tick.C
	}
}

func startReplica(t *testing.T, bin, addr, upstream, cfg, logPath string) *mirrorProc {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, "serve", "--listen", addr, "--data", t.TempDir(), "--upstream", upstream, "--log-level", "warn", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 32, DisableCompression: true}
	p := &mirrorProc{t: t, addr: addr, logPath: logPath, cmd: cmd, exited: make(chan struct{}), tr: tr, client: &http.Client{Transport: tr}}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		tr.CloseIdleConnections()
	})
	if err := p.waitReady(30 * time.Second); err != nil {
		t.Fatalf("%v\nlog:\n%s", err, p.log())
	}
	return p
}

// ownerOf is the replica that owns key while all are up.
func ownerOf(ps []*mirrorProc, key string) *mirrorProc {
	var urls []string
	for _, p := range ps {
		urls = append(urls, p.URL())
	}
	o := cluster.Rank(key, urls)[0]
	for _, p := range ps {
		if p.URL() == o {
			return p
		}
	}
	return nil
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// pullThrough pulls a single-platform image through the replica at base,
// checking every digest.
func pullThrough(ctx context.Context, c *http.Client, base, repo, tag string, img *fixture.Image) error {
	fetch := func(path, want string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", img.MediaType)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK || shaOf(body) != want {
			return fmt.Errorf("%s%s: status %d, err %v, digest %s, want %s", base, path, resp.StatusCode, err, shaOf(body), want)
		}
		return nil
	}
	if err := fetch("/v2/"+repo+"/manifests/"+tag, img.Digest); err != nil {
		return err
	}
	for _, b := range img.Blobs() {
		if err := fetch("/v2/"+repo+"/blobs/"+b, b); err != nil {
			return err
		}
	}
	return nil
}

func upstreamGets(up *fixture.Upstream, dgst string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && r.Kind == fixture.KindBlob && strings.HasSuffix(r.Path, "/"+dgst) {
			n++
		}
	}
	return n
}

// TestClusterSIGKILL runs three replicas as processes on one shared
// store. The owner of a layer is killed with SIGKILL while a client reads
// the layer through another replica and the upstream holds it half way:
// the client's body goes on through the next replica and is exactly the
// layer. Then, with that replica dead (idle), pulls through the two
// others succeed and fetch each remaining blob from the upstream once.
func TestClusterSIGKILL(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "cluster/kill", "v1", 3, 1<<20)
	ps := startReplicas(t, up.URL(), 3)
	big := img.Layers[0]
	o := ownerOf(ps, big)
	var alive []*mirrorProc
	for _, p := range ps {
		if p != o {
			alive = append(alive, p)
		}
	}
	gate := up.GateBlob(big, 256<<10)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, alive[0].URL()+"/v2/cluster/kill/blobs/"+big, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := alive[0].client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	<-gate.Reached()
	o.kill()
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("the download broke with its owner: %v\nlog:\n%s", err, alive[0].log())
	}
	if got := shaOf(append(head, rest...)); got != big {
		t.Fatalf("got %d bytes hashing to %s, want %s", len(head)+len(rest), got, big)
	}
	if n := upstreamGets(up, big); n > 2 {
		t.Errorf("layer fetched %d times upstream, want at most 2", n)
	}

	// The dead replica owned some of the other layers too: each is
	// fetched once through the survivors.
	errs := make(chan error, 4)
	for i := range 4 {
		go func() { errs <- pullThrough(ctx, alive[i%2].client, alive[i%2].URL(), "cluster/kill", "v1", img) }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, b := range img.Blobs() {
		if b == big {
			continue
		}
		if n := upstreamGets(up, b); n != 1 {
			t.Errorf("blob %s fetched %d times upstream, want 1", b, n)
		}
	}
	for _, p := range alive {
		if lines := p.errorLines(); len(lines) > 0 {
			t.Errorf("%s logged errors:\n%s", p.URL(), strings.Join(lines, "\n"))
		}
	}
}
