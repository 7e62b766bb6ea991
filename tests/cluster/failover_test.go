package cluster_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/cluster"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// pullImage pulls a single-platform image by tag through the mirror at
// base, checking every digest.
func pullImage(ctx context.Context, base, repo, tag string, img *fixture.Image) error {
	st, _, raw, err := get(ctx, base+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil || st != http.StatusOK || sha(raw) != img.Digest {
		return fmt.Errorf("%s: manifest %s: status %d, err %v, digest %s", base, tag, st, err, sha(raw))
	}
	for _, b := range img.Blobs() {
		st, _, body, err := get(ctx, base+"/v2/"+repo+"/blobs/"+b, nil)
		if err != nil || st != http.StatusOK || sha(body) != b {
			return fmt.Errorf("%s: blob %s: status %d, err %v, digest %s", base, b, st, err, sha(body))
		}
	}
	return nil
}

// TestOwnerDeadWhileIdle: the replica owning a layer is gone before
// anyone asks for it. Pulls through the two others succeed at once (the
// failed connection marks it down, the next replica in hash order owns
// its share) and every blob still crosses from the upstream once.
func TestOwnerDeadWhileIdle(t *testing.T) { testOwnerDeadWhileIdle(t, sharedDir) }

func testOwnerDeadWhileIdle(t *testing.T, store storeFor) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/idle", "v1", 4, 256<<10)
	rs := startCluster(t, 3, up, store, nil)
	dead := owner(rs, img.Layers[0])
	dead.kill()
	var alive []*replica
	for _, r := range rs {
		if r != dead {
			alive = append(alive, r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			if err := pullImage(ctx, alive[i%2].url, "library/idle", "v1", img); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, r := range alive {
		r.waitIdle(t)
	}
	for _, b := range img.Blobs() {
		if n := blobGets(up, b); n != 1 {
			t.Errorf("blob %s: %d upstream GETs, want 1", b, n)
		}
	}
	// A replica that tried the dead owner marked it down at once; the
	// other may have found every blob in the shared store already, so
	// its next probe is what tells it.
	marked := 0
	for _, r := range alive {
		if r.metric(t, "docker_mirror_cluster_peer_up", map[string]string{"peer": dead.url}) == 0 {
			marked++
		}
	}
	if marked == 0 {
		t.Errorf("no replica marked the dead owner %s down after forwarding to it", dead.url)
	}
	for _, r := range alive {
		r.srv.Cluster.Probe(ctx)
		if v := r.metric(t, "docker_mirror_cluster_peer_up", map[string]string{"peer": dead.url}); v != 0 {
			t.Errorf("%s: peer_up{%s} = %v, want 0", r.url, dead.url, v)
		}
		for _, p := range r.srv.Cluster.Peers() {
			if p.URL == dead.url && (p.Up || p.Error == "") {
				t.Errorf("%s: dead peer's state %+v", r.url, p)
			}
		}
	}
}

// TestOwnerDiesMidDownload: a client reads a layer through a replica that
// forwards it to the layer's owner; the owner is killed (listener and
// connections closed at once) while the upstream holds the layer half
// way. The client's download goes on through the next replica in hash
// order from where it broke, and gets exactly the right bytes; the
// upstream sends the layer at most twice. Pulls through the two survivors
// then succeed.
func TestOwnerDiesMidDownload(t *testing.T) { testOwnerDiesMidDownload(t, sharedDir) }

func testOwnerDiesMidDownload(t *testing.T, store storeFor) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/mid", "v1", 2, 1<<20)
	rs := startCluster(t, 3, up, store, nil)
	big := img.Layers[0]
	o := owner(rs, big)
	var via *replica
	for _, r := range rs {
		if r != o {
			via = r
			break
		}
	}
	gate := up.GateBlob(big, 256<<10)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, via.url+"/v2/library/mid/blobs/"+big, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != big {
		t.Fatalf("status %d, digest %q", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	head := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	<-gate.Reached()
	o.kill()
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("the download broke with its owner: %v", err)
	}
	if got := sha(append(head, rest...)); got != big {
		t.Fatalf("got %d bytes hashing to %s, want %s", len(head)+len(rest), got, big)
	}
	if n := blobGets(up, big); n > 2 {
		t.Errorf("layer fetched %d times upstream, want at most 2", n)
	}
	if v := via.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "blob", "result": "resumed"}); v != 1 {
		t.Errorf("resumed forwards = %v, want 1", v)
	}
	for _, r := range rs {
		if r != o {
			if err := pullImage(ctx, r.url, "library/mid", "v1", img); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestReplicasThatDisagree: two replicas know each other by names the
// other does not use for itself (127.0.0.1 vs localhost), so for some
// keys each thinks the other owns them. The hop header makes a forwarded
// request be served where it lands: no request goes round in circles, a
// blob both miss at once costs at most a duplicate fetch, and a tag
// resolves once.
func TestReplicasThatDisagree(t *testing.T) {
	up := fixture.StartUpstream(t)
	alias := func(u string) string { return strings.Replace(u, "127.0.0.1", "localhost", 1) }
	rs := startCluster(t, 2, up, sharedDir, func(i int, urls []string) (string, []string) {
		return urls[i], []string{alias(urls[1-i])}
	})
	a, b := rs[0], rs[1]
	disagree := func(key string) bool {
		return cluster.Rank(key, []string{a.url, alias(b.url)})[0] != a.url &&
			cluster.Rank(key, []string{b.url, alias(a.url)})[0] != b.url
	}
	// A blob and a tag each replica believes the other owns.
	var blob string
	for range 64 {
		data := make([]byte, 256<<10)
		rand.Read(data)
		if d := up.PushBlob(t, "library/loop", data); disagree(d) {
			blob = d
			break
		}
	}
	img := up.SeedImage(t, "library/loop", "base", 1, 1024)
	var tag string
	for i := range 256 {
		if s := fmt.Sprintf("t%d", i); disagree("docker.io/library/loop:" + s) {
			tag = s
			break
		}
	}
	if blob == "" || tag == "" {
		t.Fatal("no key found that the replicas disagree on")
	}
	up.Tag(t, "library/loop", img.Digest, tag)
	if b.srv.Cluster.Owns(blob) || a.srv.Cluster.Owns(blob) {
		t.Fatal("a replica thinks it owns the blob")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Both replicas miss the blob at once: the first upstream answer is
	// held until both clients have bytes in hand (through a download of
	// their own, or the other's, which one that forwarded a request
	// already streams then joins).
	gate := up.GateBlob(blob, 64<<10)
	var bodies []io.ReadCloser
	for _, r := range rs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/v2/library/loop/blobs/"+blob, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", r.url, resp.StatusCode)
		}
		bodies = append(bodies, resp.Body)
	}
	heads := make([][]byte, len(bodies))
	for i, b := range bodies {
		heads[i] = make([]byte, 1024)
		if _, err := io.ReadFull(b, heads[i]); err != nil {
			t.Fatal(err)
		}
	}
	gate.Open()
	for i, b := range bodies {
		rest, err := io.ReadAll(b)
		if got := sha(append(heads[i], rest...)); err != nil || got != blob {
			t.Fatalf("%s: err %v, digest %s", rs[i].url, err, got)
		}
	}
	if n := blobGets(up, blob); n > 2 {
		t.Errorf("blob fetched %d times upstream, want at most 2", n)
	}
	for i, r := range rs {
		fwd := r.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "blob"})
		if fwd > 1 {
			t.Errorf("%s forwarded %v blob requests, want at most 1 (its own client's; the other's is served here)", r.url, fwd)
		}
		if v := rs[1-i].metric(t, "docker_mirror_cluster_served_for_peers_total", nil); v != fwd {
			t.Errorf("%s served %v forwarded requests, %s forwarded %v", rs[1-i].url, v, r.url, fwd)
		}
	}

	// The tag: asked of a, resolved by b (which a thinks owns it), once.
	st, _, raw, err := get(ctx, a.url+"/v2/library/loop/manifests/"+tag, nil)
	if err != nil || st != http.StatusOK || sha(raw) != img.Digest {
		t.Fatalf("tag %s: status %d, err %v", tag, st, err)
	}
	n := 0
	for _, rec := range up.Requests() {
		if rec.Kind == fixture.KindManifest && strings.HasSuffix(rec.Path, "/manifests/"+tag) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("tag %s asked upstream %d times, want 1", tag, n)
	}
	a.waitIdle(t)
	b.waitIdle(t)
	if v := a.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "manifest", "result": "ok"}); v != 1 {
		t.Errorf("a forwarded %v manifest requests, want 1 (the tag)", v)
	}
	if v := b.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "manifest"}); v != 0 {
		t.Errorf("b forwarded %v manifest requests, want 0 (a's tag is served where it lands)", v)
	}
}

// TestRunningDownloadJoinedNotForwarded: a replica already downloading a
// blob it does not own (it fetched it while the owner was down, or for a
// replica that thinks it owns it) gives its next client that download,
// as the background mirror does, instead of sending the client to the
// owner, which would fetch the blob from the upstream once more.
func TestRunningDownloadJoinedNotForwarded(t *testing.T) {
	up := fixture.StartUpstream(t)
	data := make([]byte, 256<<10)
	rand.Read(data)
	blob := up.PushBlob(t, "library/running", data)
	rs := startCluster(t, 2, up, sharedDir, nil)
	via := rs[0]
	if owner(rs, blob) == via {
		via = rs[1]
	}
	gate := up.GateBlob(blob, 64<<10)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A request another replica forwarded: served here, downloading the
	// blob here. Its first bytes say the download runs here (the gate's
	// reached says only that the upstream sent them).
	first, streaming := make(chan error, 1), make(chan struct{})
	go func() {
		started := sync.OnceFunc(func() { close(streaming) })
		first <- func() error {
			defer started() // a failure's too
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, via.url+"/v2/library/running/blobs/"+blob, nil)
			if err != nil {
				return err
			}
			req.Header.Set(cluster.HopHeader, "http://other.test:5000")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			head := make([]byte, 1024)
			if _, err := io.ReadFull(resp.Body, head); err != nil {
				return err
			}
			started()
			rest, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || sha(append(head, rest...)) != blob {
				return fmt.Errorf("status %d, digest %s, %v", resp.StatusCode, sha(append(head, rest...)), err)
			}
			return nil
		}()
	}()
	<-streaming

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, via.url+"/v2/library/running/blobs/"+blob, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	if n := blobGets(up, blob); n != 1 {
		t.Errorf("blob fetched %d times upstream while this replica was downloading it, want 1", n)
	}
	gate.Open()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || sha(append(head, rest...)) != blob {
		t.Fatalf("second client: err %v, digest %s", err, sha(append(head, rest...)))
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// TestOwnerDrainingFinishesItsAnswers: the owner of a layer a client
// reads through another replica is stopped gracefully (SIGTERM: its
// listener closes, its requests in flight may finish) while the upstream
// holds the layer half way. The other replica's probe finds it gone and
// marks it down; the layer still coming from it keeps coming: the client
// gets it whole from the owner, and the upstream sends it once, not again
// to the next replica.
func TestOwnerDrainingFinishesItsAnswers(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/drain", "v1", 1, 1<<20)
	rs := startCluster(t, 2, up, sharedDir, nil)
	big := img.Layers[0]
	o := owner(rs, big)
	via := rs[0]
	if via == o {
		via = rs[1]
	}
	gate := up.GateBlob(big, 256<<10)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, via.url+"/v2/library/drain/blobs/"+big, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	<-gate.Reached()
	// SIGTERM: the listener closes at once, the answers in flight go on.
	o.ln.Close()
	drained := make(chan error, 1)
	go func() { drained <- o.hs.Shutdown(ctx) }()
	via.srv.Cluster.Probe(ctx)
	if v := via.metric(t, "docker_mirror_cluster_peer_up", map[string]string{"peer": o.url}); v != 0 {
		t.Fatalf("peer_up{%s} = %v after its listener closed, want 0", o.url, v)
	}
	gate.Open()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || sha(append(head, rest...)) != big {
		t.Fatalf("err %v, digest %s", err, sha(append(head, rest...)))
	}
	<-drained
	if n := blobGets(up, big); n != 1 {
		t.Errorf("layer fetched %d times upstream, want 1: the draining owner was sending it", n)
	}
	if v := via.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "blob", "result": "resumed"}); v != 0 {
		t.Errorf("resumed forwards = %v, want 0", v)
	}
}
