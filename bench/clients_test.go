package bench

import (
	"bufio"
	"context"
	"fmt"
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
// pull a warm image (manifest by tag, config and 4 layers of 1 MiB) from
// the mirror. Reports errors (the benchmark fails on any), the p50/p99 of
// the requests, the wall time, the throughput and the process's peak RSS
// during the rounds (clients included).
func BenchmarkManyClients(b *testing.B) {
	up := fixture.StartUpstream(b)
	up.SeedImage(b, benchRepo, benchTag, 4, 1<<20)
	m := servertest.Start(b, up.URL())
	pull(b, m.Host(), true)
	m.WaitIdle()
	if res, _ := pull(b, m.Host(), true); res.Misses != 0 {
		b.Fatalf("%d blobs were not cache hits", res.Misses)
	}
	runtime.GC()
	resetPeakRSS()
	var lat latencies
	var wall time.Duration
	var bytes int64
	for b.Loop() {
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs []error
		gate := make(chan struct{})
		for range manyClients {
			wg.Go(func() {
				tr := NewTransport(2)
				defer tr.CloseIdleConnections()
				c := &Client{base: "http://" + m.Host(), repo: benchRepo, hc: &http.Client{Transport: tr}}
				<-gate
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				start := time.Now()
				res, err := c.Pull(ctx, benchTag, 1, false)
				d := time.Since(start)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				bytes += res.Bytes
				// Per request: the manifest, then each blob in turn.
				lat = append(lat, res.ManifestAt, (d-res.ManifestAt)/time.Duration(len(res.Blobs)))
			})
		}
		start := time.Now()
		close(gate)
		wg.Wait()
		wall += time.Since(start)
		if len(errs) > 0 {
			b.Fatalf("%d of %d clients failed; first: %v", len(errs), manyClients, errs[0])
		}
	}
	b.ReportMetric(float64(manyClients), "clients")
	b.ReportMetric(ms(lat.pct(0.5)), "req-p50-ms")
	b.ReportMetric(ms(lat.pct(0.99)), "req-p99-ms")
	b.ReportMetric(mbps(bytes, wall), "MB/s")
	b.ReportMetric(peakRSS(), "peak-RSS-MiB")
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
