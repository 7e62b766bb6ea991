package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
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
// holds open to each server (BENCH_IDLE_CONNS; the machine allows 20,000
// descriptors per process, and only the clients' ends are in this one).
var idleConns = int(envInt("BENCH_IDLE_CONNS", 10000))

// BenchmarkIdleConns opens 10,000 connections to the docker-mirror binary
// and, in the same iteration in alternating order, to nginx (skipped, with
// a message, if nginx is not installed), sends one GET /v2/ on each, reads
// the answer and leaves the connections idle (keep-alive) while it
// measures. rss-KiB/conn is the growth of the server's RSS per connection
// (nginx: master and workers, whose connection structures are allocated
// up front for worker_connections), held-RSS-MiB the server's RSS with
// the connections open; go-KiB/conn the growth of the mirror's Go heap in
// use and stacks (from its /metrics, without forcing a GC).
func BenchmarkIdleConns(b *testing.B) {
	up := fixture.StartUpstream(b)
	m := startMirror(b, buildMirror(b), up.URL(), nil)
	type side struct {
		s          *serverProc
		prefix     string
		rss, goMem float64 // KiB per connection, summed over iterations
		held       float64 // the largest RSS with the connections open, MiB
	}
	sides := []*side{{s: m}}
	if bin := nginxBinary(); bin != "" {
		n := startNginx(b, bin, newTestCert(b))
		n.put(b, "/v2/index.html", []byte("{}"))
		sides = append(sides, &side{s: n.procs("nginx", n.url), prefix: "nginx-"})
	} else {
		b.Log(noNginx)
	}
	n := 0
	for b.Loop() {
		for i := range sides {
			sd := sides[(i+n)%len(sides)]
			rss, goMem, held := holdIdle(b, sd.s, sd.prefix == "")
			sd.rss += rss
			sd.goMem += goMem
			sd.held = max(sd.held, held)
		}
		n++
	}
	b.ReportMetric(float64(idleConns), "conns")
	for _, sd := range sides {
		b.ReportMetric(sd.rss/float64(n), sd.prefix+"rss-KiB/conn")
		b.ReportMetric(sd.held, sd.prefix+"held-RSS-MiB")
		if sd.prefix == "" {
			b.ReportMetric(sd.goMem/float64(n), "go-KiB/conn")
		}
	}
}

// holdIdle opens idleConns connections to s, one GET /v2/ on each, and
// returns the growth of s's RSS and (with goStats, for the mirror) of its
// Go heap and stacks per connection, in KiB, and s's RSS in MiB while it
// holds them, before closing them.
func holdIdle(b *testing.B, s *serverProc, goStats bool) (rss, goMem, held float64) {
	b.Helper()
	host := HostOf(s.url)
	var go0 float64
	if goStats {
		go0 = goMemory(b, s.url)
	}
	rss0 := s.memMiB("VmRSS")
	conns := make([]net.Conn, 0, idleConns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range idleConns {
		c, err := net.Dial("tcp", host)
		if err != nil {
			b.Fatalf("%s: after %d connections: %v", s.name, len(conns), err)
		}
		conns = append(conns, c)
		if _, err := fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 512), nil)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s: GET /v2/: %s", s.name, resp.Status)
		}
	}
	held = s.memMiB("VmRSS")
	rss = (held - rss0) * 1024 / float64(idleConns)
	if goStats {
		goMem = (goMemory(b, s.url) - go0) / 1024 / float64(idleConns)
	}
	return rss, goMem, held
}

// goMemory is the Go heap in use plus stacks of the mirror at base, in
// bytes, from its /metrics.
func goMemory(b *testing.B, base string) float64 {
	b.Helper()
	hc := &http.Client{Transport: NewTransport(1)}
	defer hc.CloseIdleConnections()
	var sum float64
	found := 0
	for _, l := range strings.Split(string(get(b, hc, base+"/metrics")), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && (f[0] == "go_memstats_heap_inuse_bytes" || f[0] == "go_memstats_stack_inuse_bytes") {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				b.Fatalf("/metrics: %q: %v", l, err)
			}
			sum += v
			found++
		}
	}
	if found != 2 {
		b.Fatal("/metrics has no go_memstats_heap_inuse_bytes or go_memstats_stack_inuse_bytes")
	}
	return sum
}
