package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// pull pulls repo:tag's platform image through the mirror at base as a
// client does, byte for byte: the index by tag, the image by digest, then
// first the blob first (reporting on started once it has bytes of it in
// hand), then the others. Every digest is checked.
func pull(ctx context.Context, base, repo, tag, platform, first string, started chan<- struct{}) error {
	st, _, index, err := get(ctx, base+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil || st != http.StatusOK {
		return fmt.Errorf("%s: index: %d %v", base, st, err)
	}
	var idx struct {
		Manifests []struct {
			Digest   string
			Platform struct{ OS, Architecture, Variant string }
		}
	}
	if err := json.Unmarshal(index, &idx); err != nil {
		return err
	}
	var image string
	for _, m := range idx.Manifests {
		if p := strings.TrimSuffix(m.Platform.OS+"/"+m.Platform.Architecture+"/"+m.Platform.Variant, "/"); p == platform {
			image = m.Digest
		}
	}
	st, _, raw, err := get(ctx, base+"/v2/"+repo+"/manifests/"+image, nil)
	if err != nil || st != http.StatusOK || sha(raw) != image {
		return fmt.Errorf("%s: image %s: %d %v", base, image, st, err)
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	blobs := []string{first, m.Config.Digest}
	for _, l := range m.Layers {
		if l.Digest != first {
			blobs = append(blobs, l.Digest)
		}
	}
	for i, b := range blobs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/"+repo+"/blobs/"+b, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		var head [1]byte
		if _, err := io.ReadFull(resp.Body, head[:]); err != nil {
			resp.Body.Close()
			return fmt.Errorf("%s: blob %s: status %d: %v", base, b, resp.StatusCode, err)
		}
		if i == 0 && started != nil {
			started <- struct{}{}
		}
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: blob %s: status %d: %v", base, b, resp.StatusCode, err)
		}
		if got := sha(append(head[:], rest...)); got != b {
			return fmt.Errorf("%s: blob %s: body hashes to %s", base, b, got)
		}
	}
	return nil
}

// TestHerdAcrossReplicas: 16 clients spread over 3 replicas pull one
// image at once while its largest layer is held at the upstream. Every
// client has bytes of that layer before the upstream has sent it whole
// (forwarding streams), and the upstream sends every blob once: 1.00x the
// unique bytes, although each replica also mirrors every platform in the
// background.
func TestHerdAcrossReplicas(t *testing.T) { testHerd(t, sharedDir) }

func testHerd(t *testing.T, store storeFor) {
	up := fixture.StartUpstream(t)
	img := up.SeedMultiArch(t, "library/herd", "v1", fixture.OCI, fixture.WithLayerSize(512<<10), fixture.WithLayers(2))
	rs := startCluster(t, 3, up, store, nil)
	amd := img.Platforms["linux/amd64"]
	big := amd.Layers[len(amd.Layers)-1]
	gate := up.GateBlob(big, 64<<10)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const clients = 16
	started := make(chan struct{}, clients)
	errs := make(chan error, clients)
	for i := range clients {
		go func() { errs <- pull(ctx, rs[i%len(rs)].url, "library/herd", "v1", "linux/amd64", big, started) }()
	}
	for range clients {
		select {
		case <-started:
		case err := <-errs:
			t.Fatalf("a client finished before the held layer was released: %v", err)
		case <-ctx.Done():
			t.Fatal("clients did not all get bytes of the held layer while the upstream held it")
		}
	}
	gate.Open()
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	if t.Failed() {
		return
	}

	// Every blob the upstream sent, it sent once and whole.
	var unique int64
	seen := map[string]bool{}
	for _, rec := range up.Requests() {
		if rec.Kind != fixture.KindBlob || rec.Method != http.MethodGet {
			continue
		}
		d := rec.Path[strings.LastIndex(rec.Path, "/")+1:]
		if seen[d] {
			continue
		}
		seen[d] = true
		if n := blobGets(up, d); n != 1 {
			t.Errorf("blob %s: %d upstream GETs, want 1", d, n)
		}
		unique += int64(len(wantBlob(t, rs[0].url, "library/herd", d)))
	}
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		for _, b := range img.BlobsFor(p) {
			if !seen[b] {
				t.Errorf("%s blob %s never fetched: the background mirror did not finish", p, b)
			}
		}
	}
	sent := up.BlobBytes()
	t.Logf("%d clients over %d replicas: upstream sent %d blob bytes for %d unique: %.2fx", clients, len(rs), sent, unique, float64(sent)/float64(unique))
	if sent != unique {
		t.Errorf("upstream sent %d blob bytes, %.2fx the %d unique bytes; want 1.00x", sent, float64(sent)/float64(unique), unique)
	}
	// One upstream GET per manifest too (tag, images, attestations).
	manifests := map[string]int{}
	for _, rec := range up.Requests() {
		if rec.Kind == fixture.KindManifest && rec.Method == http.MethodGet {
			manifests[rec.Path]++
		}
	}
	for p, n := range manifests {
		if n != 1 {
			t.Errorf("manifest %s: %d upstream GETs, want 1", p, n)
		}
	}
	// The held layer reached the clients of the two other replicas through
	// its owner.
	o := owner(rs, big)
	var forwarded float64
	for _, r := range rs {
		if r != o {
			forwarded += r.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "blob", "result": "ok"})
		}
	}
	if forwarded == 0 {
		t.Error("no blob was forwarded to its owner")
	}
	for _, r := range rs {
		if v := r.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"result": "fallback"}); v != 0 {
			t.Errorf("%s: %v forwards fell back to a local fetch", r.url, v)
		}
	}
}
