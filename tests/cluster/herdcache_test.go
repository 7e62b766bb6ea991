package cluster_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A herd of clients spread over two replicas asking for one blob not
// held, which its owner downloads once for all (the others' requests
// forwarded to it), is one miss, the others hits, as on one replica: the
// replica that forwarded said X-Cache: miss to each of its clients and
// counted a miss for each, whatever its owner answered, so the cluster's
// hit ratio showed a miss for every client of a replica not the blob's
// owner.
func TestHerdAcrossReplicasIsOneMiss(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 1, 512<<10)
	layer := img.Layers[0]
	rs := startCluster(t, 2, up, sharedDir, nil)
	gate := up.GateBlob(layer, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const clients = 8
	type answer struct {
		cache string
		err   error
	}
	started := make(chan struct{}, clients)
	answers := make(chan answer, clients)
	for i := range clients {
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, rs[i%len(rs)].url+"/v2/library/herd/blobs/"+layer, nil)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			var head [1]byte
			if _, err := io.ReadFull(resp.Body, head[:]); err != nil {
				answers <- answer{err: err}
				return
			}
			started <- struct{}{}
			rest, err := io.ReadAll(resp.Body)
			if err == nil && (resp.StatusCode != http.StatusOK || sha(append(head[:], rest...)) != layer) {
				err = io.ErrUnexpectedEOF
			}
			answers <- answer{cache: resp.Header.Get("X-Cache"), err: err}
		}()
	}
	for range clients {
		select {
		case <-started:
		case a := <-answers:
			t.Fatalf("a client answered before the held blob was released: %+v", a)
		case <-ctx.Done():
			t.Fatal("clients did not all get bytes of the held blob while the upstream held it")
		}
	}
	gate.Open()
	seen := map[string]int{}
	for range clients {
		a := <-answers
		if a.err != nil {
			t.Fatal(a.err)
		}
		seen[a.cache]++
	}
	if n := blobGets(up, layer); n != 1 {
		t.Fatalf("blob fetched %d times, want once", n)
	}
	if seen["miss"] != 1 || seen["hit"] != clients-1 {
		t.Errorf("X-Cache of %d clients over %d replicas sharing one download: %v, want 1 miss and %d hits", clients, len(rs), seen, clients-1)
	}
	var hits, misses int64
	for _, r := range rs {
		r.waitIdle(t)
		_, _, body, err := get(ctx, r.url+"/api/v1/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Traffic struct {
				SinceStart struct{ Hits, Misses int64 } `json:"since_start"`
			}
		}
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatal(err)
		}
		hits, misses = hits+st.Traffic.SinceStart.Hits, misses+st.Traffic.SinceStart.Misses
	}
	if misses != 1 || hits != clients-1 {
		t.Errorf("status pages of the replicas: %d hits, %d misses in all; want %d, 1", hits, misses, clients-1)
	}
}
