package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// manyClients pull the warm image at once in BenchmarkManyClients
// (BENCH_CLIENTS overrides it).
var manyClients = int(envInt("BENCH_CLIENTS", 1000))

// BenchmarkManyClients: 1,000 clients at once, each on its own connection,
// pull a warm image (manifest by tag, config and 4 layers of 1 MiB, one
// request at a time) from the docker-mirror binary and, in the same
// iteration in alternating order, from nginx serving the same bytes as
// static files (sendfile; skipped, with a message, if nginx is not
// installed). Both servers run as child processes, so the figures of each
// are its own: the requests' p50/p99, the throughput, errors (the
// benchmark fails on any), the server's CPU time per GB and its peak RSS
// during the rounds (nginx: master and workers summed). x-nginx is the
// paired throughput ratio mirror / nginx.
func BenchmarkManyClients(b *testing.B) {
	up := fixture.StartUpstream(b)
	up.SeedImage(b, benchRepo, benchTag, 4, 1<<20)
	m := startMirror(b, buildMirror(b), up.URL(), nil)
	img := warmImage(b, m.url)
	servers := []*serverProc{m}
	prefixes := []string{""}
	if bin := nginxBinary(); bin != "" {
		n := startNginx(b, bin, newTestCert(b))
		for path, data := range img {
			n.put(b, path, data)
		}
		servers = append(servers, n.procs("nginx", n.url))
		prefixes = append(prefixes, "nginx-")
	} else {
		b.Log(noNginx)
	}
	results := make([]round, len(servers))
	n := 0
	for b.Loop() {
		for i := range servers {
			s := (i + n) % len(servers)
			results[s].add(measureServer(servers[s], func() round { return pullAll(servers[s].url) }))
		}
		n++
	}
	b.ReportMetric(float64(manyClients), "clients")
	for i, s := range servers {
		results[i].report(b, s.name, prefixes[i])
	}
	if len(results) == 2 {
		b.ReportMetric(float64(results[1].wall)/float64(results[0].wall), "x-nginx")
	}
}

// pullAll has manyClients clients, each with a connection of its own,
// pull the warm image from base at once, one request at a time. Its
// latencies are per request: the manifest's, and each client's mean per
// blob.
func pullAll(base string) round {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
		r  round
	)
	gate := make(chan struct{})
	for range manyClients {
		wg.Go(func() {
			tr := NewTransport(2)
			defer tr.CloseIdleConnections()
			c := &Client{base: base, repo: benchRepo, hc: &http.Client{Transport: tr}}
			<-gate
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			res, err := c.Pull(ctx, benchTag, 1, false)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			r.bytes += res.Bytes
			if err != nil {
				r.errs++
				if r.firstErr == nil {
					r.firstErr = err
				}
				return
			}
			r.lat = append(r.lat, res.ManifestAt, (d-res.ManifestAt)/time.Duration(len(res.Blobs)))
		})
	}
	close(gate)
	wg.Wait()
	return r
}

// warmImage pulls benchRepo:benchTag through the mirror at base until
// every blob is a cache hit, and returns the image as nginx must serve it:
// the bytes the mirror answered for each path (the manifest by tag, the
// config and the layers).
func warmImage(b *testing.B, base string) map[string][]byte {
	b.Helper()
	ctx := context.Background()
	hc := &http.Client{Transport: NewTransport(1)}
	b.Cleanup(hc.CloseIdleConnections)
	c := &Client{base: base, repo: benchRepo, hc: hc}
	deadline := time.Now().Add(time.Minute)
	for {
		res, err := c.Pull(ctx, benchTag, 0, true)
		if err != nil {
			b.Fatal(err)
		}
		if res.Misses == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d blobs were still not cache hits after a minute", res.Misses)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res, err := c.Pull(ctx, benchTag, 0, false)
	if err != nil {
		b.Fatal(err)
	}
	manifest, err := c.Manifest(ctx, benchTag)
	if err != nil {
		b.Fatal(err)
	}
	prefix := "/v2/" + benchRepo
	img := map[string][]byte{prefix + "/manifests/" + benchTag: manifest}
	for _, d := range res.Blobs {
		img[prefix+"/blobs/"+d.Digest.String()] = get(b, hc, base+prefix+"/blobs/"+d.Digest.String())
	}
	return img
}

// get GETs url and returns its body, failing the benchmark unless 200.
func get(b *testing.B, hc *http.Client, url string) []byte {
	b.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return body
}

// idleConns is how many idle keep-alive connections BenchmarkIdleConns
// holds (both ends live in this process: 2 descriptors each).
var idleConns = int(envInt("BENCH_IDLE_CONNS", 9000))

// rssMiB is the process's current RSS (VmRSS) in MiB.
func rssMiB() float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkIdleConns opens 9,000 connections to the mirror (the machine
// allows 20,000 descriptors; BENCH_IDLE_CONNS), sends one GET /v2/ on
// each, reads the answer and leaves it idle (keep-alive). KiB/conn is the
// growth of the process's RSS and of the Go heap+stacks per connection;
// the client side is a bare net.Conn, so nearly all of it is the server's.
func BenchmarkIdleConns(b *testing.B) {
	up := fixture.StartUpstream(b)
	m := servertest.Start(b, up.URL())
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		rss0 := rssMiB()
		conns := make([]net.Conn, 0, idleConns)
		for range idleConns {
			c, err := net.Dial("tcp", m.Host())
			if err != nil {
				b.Fatalf("after %d connections: %v", len(conns), err)
			}
			conns = append(conns, c)
			if _, err := fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n", m.Host()); err != nil {
				b.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("GET /v2/: %s", resp.Status)
			}
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		rss := rssMiB() - rss0
		heap := float64((after.HeapInuse+after.StackInuse)-(before.HeapInuse+before.StackInuse)) / 1024
		b.ReportMetric(rss*1024/float64(idleConns), "rss-KiB/conn")
		b.ReportMetric(heap/float64(idleConns), "go-KiB/conn")
		b.ReportMetric(float64(idleConns), "conns")
		for _, c := range conns {
			c.Close()
		}
	}
}
