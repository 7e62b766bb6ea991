package bench

// The benchmarks of docs/performance.md. Run them with
//
//	go test -run='^$' -bench=. -benchtime=3x ./bench/
//
// Every server runs in this process on 127.0.0.1: the upstream is the test
// fixture (a real distribution registry, in memory) and the mirror is the
// real proxy on a filesystem store in a temporary directory. Besides the
// standard ns/op, each benchmark reports its own figures with ReportMetric
// (ms/pull, MB/s with MB = 10^6 bytes, ratios); setup and seeding are never
// timed.

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The emulated WAN between the mirror (or a direct client) and the
// upstream: every upstream response waits wanLatency before its headers (one
// round trip per request), and every response body is paced at wanRate.
// The fixture paces each response on its own, so parallel layer downloads
// each get wanRate, as from a CDN that limits every connection.
// BENCH_WAN_LATENCY (a Go duration) and BENCH_WAN_MIBPS (MiB/s per
// response) override them.
var (
	wanLatency = envDuration("BENCH_WAN_LATENCY", 50*time.Millisecond)
	wanRate    = envInt("BENCH_WAN_MIBPS", 100) << 20 // bytes per second per response
)

func envDuration(name string, def time.Duration) time.Duration {
	if v, ok := os.LookupEnv(name); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			panic(fmt.Sprintf("%s: %v", name, err))
		}
		return d
	}
	return def
}

func envInt(name string, def int64) int64 {
	if v, ok := os.LookupEnv(name); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			panic(fmt.Sprintf("%s: invalid number %q", name, v))
		}
		return n
	}
	return def
}

// The image pulled by the pull benchmarks: one linux/amd64 manifest, a
// config and imageLayers layers of imageLayerSize random (incompressible)
// bytes each.
const (
	benchRepo      = "library/bench"
	benchTag       = "v1"
	imageLayers    = 4
	imageLayerSize = 16 << 20
)

// A profile is how the upstream authenticates.
type profile struct {
	name string
	// auth: Docker Hub's anonymous flow (401 on /v2/, then a bearer token
	// per repository from /token), else an open registry.
	auth bool
}

var profiles = []profile{{"hub", true}, {"open", false}}

var wan = fixture.Throttle{Latency: wanLatency, BytesPerSec: wanRate}

// pull does what `docker pull` does on the wire against host, with a fresh
// connection pool: handshake, manifest, then config and layers all in
// parallel, every blob read to the end and verified.
func pull(b *testing.B, host string, verify bool) (PullResult, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tr := NewTransport(16)
	defer tr.CloseIdleConnections()
	start := time.Now()
	c, err := Login(ctx, host, benchRepo, tr)
	if err != nil {
		b.Fatal(err)
	}
	res, err := c.Pull(ctx, benchTag, 0, verify)
	d := time.Since(start)
	if err != nil {
		b.Fatalf("pull from %s: %v", host, err)
	}
	return res, d
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// mbps is a throughput in MB/s (10^6 bytes per second).
func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / 1e6 / d.Seconds() }

// wireTimes gathers the blob GETs of the direct pulls as their client saw
// them (BlobTime): how long the upstream took to answer (its emulated round
// trip, 20 or 50 ms, plus its own time) and the rate of each body (the
// emulated per-connection pace): what BENCH_UPSTREAM_PROC changes.
type wireTimes struct{ waits, rates []float64 }

func (w *wireTimes) add(res PullResult) {
	for _, t := range res.Times {
		w.waits = append(w.waits, ms(t.Wait))
		if t.Bytes >= 1<<20 { // a small body's rate is its first write's
			w.rates = append(w.rates, t.Rate()/(1<<20))
		}
	}
}

// report adds direct-blob-wait-ms (median), direct-blob-wait-max-ms and
// direct-blob-MiBps (the median body's rate).
func (w *wireTimes) report(b *testing.B) {
	if len(w.waits) == 0 {
		return
	}
	b.ReportMetric(median(w.waits), "direct-blob-wait-ms")
	b.ReportMetric(slices.Max(w.waits), "direct-blob-wait-max-ms")
	if len(w.rates) > 0 {
		b.ReportMetric(median(w.rates), "direct-blob-MiBps")
	}
}

// median of xs (not modified).
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkDirectPull pulls the image straight from the throttled
// upstream: the baseline of BenchmarkColdPull.
func BenchmarkDirectPull(b *testing.B) {
	for _, p := range profiles {
		b.Run(p.name, func(b *testing.B) {
			up := startUpstream(b, p.auth, wan)
			up.Seed(b, benchRepo, benchTag, imageLayers, imageLayerSize)
			var total time.Duration
			var bytes int64
			n := 0
			for b.Loop() {
				res, d := pull(b, up.Host(), true)
				total += d
				bytes += res.Bytes
				n++
			}
			b.ReportMetric(ms(total)/float64(n), "ms/pull")
			b.ReportMetric(mbps(bytes, total), "MB/s")
		})
	}
}

// BenchmarkColdPull pulls the image through a fresh mirror (empty store)
// of a fresh upstream, each iteration. In the same iteration, untimed, the
// same client pulls the image straight from that upstream, in alternating
// order, so x-direct is a paired ratio of the two. upstream-bytes/unique is
// what the upstream sent for the mirror's pull (background mirroring
// included) over the image's blob bytes.
func BenchmarkColdPull(b *testing.B) {
	for _, p := range profiles {
		b.Run(p.name, func(b *testing.B) {
			var cold, direct time.Duration
			var upBytes, unique int64
			var pings, tokens int
			var wt wireTimes
			n := 0
			for b.Loop() {
				b.StopTimer()
				up := startUpstream(b, p.auth, wan)
				up.Seed(b, benchRepo, benchTag, imageLayers, imageLayerSize)
				m := servertest.Start(b, up.URL())
				directFirst := n%2 == 0
				if directFirst {
					r, d := pull(b, up.Host(), true)
					direct += d
					wt.add(r)
					up.ResetCounts()
				}

				b.StartTimer()
				res, d := pull(b, m.Host(), true)
				b.StopTimer()
				cold += d
				if res.Misses == 0 {
					b.Fatal("every blob was a cache hit on a cold mirror")
				}
				m.WaitIdle()
				upBytes += up.BlobBytes()
				unique += UniqueBytes(res.Blobs)
				pings += up.Count(http.MethodGet, fixture.KindPing)
				tokens += up.Count("", fixture.KindToken)

				if !directFirst {
					r, d := pull(b, up.Host(), true)
					direct += d
					wt.add(r)
				}
				m.Stop()
				up.Stop()
				n++
				b.StartTimer()
			}
			b.ReportMetric(ms(cold)/float64(n), "ms/pull")
			b.ReportMetric(ms(direct)/float64(n), "direct-ms/pull")
			b.ReportMetric(float64(cold)/float64(direct), "x-direct")
			b.ReportMetric(float64(upBytes)/float64(unique), "upstream-bytes/unique")
			b.ReportMetric(float64(pings)/float64(n), "upstream-pings/pull")
			b.ReportMetric(float64(tokens)/float64(n), "upstream-tokens/pull")
			wt.report(b)
		})
	}
}

// BenchmarkWarmPull pulls the image through a mirror that has it all:
// manifest, config and layers in parallel, with a client that reads every
// byte but does not hash (so the proxy, not the client's SHA-256, is
// measured). upstream-reqs/pull must be 0.
func BenchmarkWarmPull(b *testing.B) {
	up := startUpstream(b, true, wan)
	up.Seed(b, benchRepo, benchTag, imageLayers, imageLayerSize)
	m := servertest.Start(b, up.URL())
	pull(b, m.Host(), true)
	m.WaitIdle()
	if res, _ := pull(b, m.Host(), true); res.Misses != 0 {
		b.Fatalf("%d blobs were not cache hits on a warm mirror", res.Misses)
	}
	reqs := up.RequestCount()

	var total time.Duration
	var bytes int64
	n := 0
	for b.Loop() {
		res, d := pull(b, m.Host(), false)
		total += d
		bytes += res.Bytes
		n++
	}
	b.ReportMetric(mbps(bytes, total), "MB/s")
	b.ReportMetric(ms(total)/float64(n), "ms/pull")
	b.ReportMetric(float64(up.RequestCount()-reqs)/float64(n), "upstream-reqs/pull")
}

// The blob of the warm blob benchmarks and the number of parallel clients.
const (
	blobSize    = 64 << 20
	blobClients = 8
)

// randomBytes returns n deterministic pseudo-random (incompressible) bytes.
func randomBytes(n int) []byte {
	buf := make([]byte, n)
	_, _ = mrand.NewChaCha8([32]byte{'d', 'o', 'c', 'k', 'e', 'r', '-', 'm', 'i', 'r', 'r', 'o', 'r'}).Read(buf)
	return buf
}

// flood has clients GET url in parallel, each reading all size bytes, over
// kept-alive connections.
type flood struct {
	tr      *http.Transport
	hc      *http.Client
	url     string
	clients int
	size    int64
}

func newFlood(b *testing.B, url string, clients int, size int64) *flood {
	tr := NewTransport(clients)
	b.Cleanup(tr.CloseIdleConnections)
	return &flood{tr: tr, hc: &http.Client{Transport: tr}, url: url, clients: clients, size: size}
}

// round runs the clients once and returns the wall time.
func (f *flood) round(b *testing.B) time.Duration {
	d, _ := f.roundCPU(b)
	return d
}

// roundCPU runs the clients once and returns the wall time and the CPU
// time the process (clients and server) used meanwhile.
func (f *flood) roundCPU(b *testing.B) (time.Duration, time.Duration) {
	b.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, f.clients)
	cpu := cpuTime()
	start := time.Now()
	for range f.clients {
		wg.Go(func() {
			n, _, err := Fetch(ctx, f.hc, f.url, "")
			if err == nil && n != f.size {
				err = fmt.Errorf("read %d bytes, want %d", n, f.size)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	cpu = cpuTime() - cpu
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return d, cpu
}

func (f *flood) bytes(rounds int) int64 { return int64(rounds) * int64(f.clients) * f.size }

// serveFile starts Go's http.ServeFile of data (written to a file in a
// temporary directory) on 127.0.0.1 and returns the file's URL.
func serveFile(b *testing.B, data []byte) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, path)
	}))
	b.Cleanup(srv.Close)
	return srv.URL + "/blob"
}

// BenchmarkWarmBlob64MiB8Clients: 8 clients at once GET one stored 64 MiB
// blob from the mirror, each iteration. Each iteration also runs, untimed
// and in alternating order, the same round against http.ServeFile of the
// same bytes, so x-servefile is a paired ratio of throughputs (1.00: as
// fast as the static file server). cpu-ms/GB is the CPU time the whole
// process (clients and server) spent per GB served, for either server: on
// a machine shared with other work it moves much less than wall time.
func BenchmarkWarmBlob64MiB8Clients(b *testing.B) {
	data := randomBytes(blobSize)
	up := fixture.StartUpstream(b)
	dgst := up.PushBlob(b, benchRepo, data)
	m := servertest.Start(b, up.URL())
	url := m.URL() + "/v2/" + benchRepo + "/blobs/" + dgst
	hc := &http.Client{Transport: NewTransport(1)}
	ctx := context.Background()
	if _, _, err := Fetch(ctx, hc, url, dgst); err != nil {
		b.Fatal(err)
	}
	// The download is stored once the response is complete: wait for it.
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := m.Store.Stat(ctx, benchRepo, digest.Digest(dgst)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the blob was not stored")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, cache, err := Fetch(ctx, hc, url, dgst); err != nil || cache != "hit" {
		b.Fatalf("warm fetch: X-Cache %q, error %v", cache, err)
	}
	reqs := len(up.Requests())

	mirror := newFlood(b, url, blobClients, blobSize)
	static := newFlood(b, serveFile(b, data), blobClients, blobSize)
	mirror.round(b) // open the connections
	static.round(b)
	var mt, st, mcpu, scpu time.Duration
	runStatic := func() {
		b.StopTimer()
		d, c := static.roundCPU(b)
		st, scpu = st+d, scpu+c
		b.StartTimer()
	}
	n := 0
	for b.Loop() {
		if n%2 == 1 {
			runStatic()
		}
		d, c := mirror.roundCPU(b)
		mt, mcpu = mt+d, mcpu+c
		if n%2 == 0 {
			runStatic()
		}
		n++
	}
	gb := float64(mirror.bytes(n)) / 1e9
	b.ReportMetric(mbps(mirror.bytes(n), mt), "MB/s")
	b.ReportMetric(mbps(static.bytes(n), st), "servefile-MB/s")
	b.ReportMetric(float64(st)/float64(mt), "x-servefile")
	b.ReportMetric(ms(mcpu)/gb, "cpu-ms/GB")
	b.ReportMetric(ms(scpu)/gb, "servefile-cpu-ms/GB")
	if d := len(up.Requests()) - reqs; d != 0 {
		b.Errorf("the warm blob cost %d upstream requests", d)
	}
}

// BenchmarkServeFile64MiB8Clients: the same flood against Go's
// http.ServeFile of a 64 MiB file in a temporary directory: the static
// file server the mirror's warm blob throughput is compared to.
func BenchmarkServeFile64MiB8Clients(b *testing.B) {
	static := newFlood(b, serveFile(b, randomBytes(blobSize)), blobClients, blobSize)
	static.round(b) // open the connections
	var total time.Duration
	n := 0
	for b.Loop() {
		total += static.round(b)
		n++
	}
	b.ReportMetric(mbps(static.bytes(n), total), "MB/s")
}

// herdClients pull the same uncached image at once in BenchmarkHerd16.
const herdClients = 16

// BenchmarkHerd16: 16 clients pull the same image through a fresh mirror
// of a fresh Docker Hub-like upstream at the same moment. ms/herd is the
// wall time until the last client has verified its last layer;
// upstream-bytes/unique is what the upstream sent (background mirroring
// included) over the image's blob bytes, 1.00 if every blob crossed the
// WAN once.
func BenchmarkHerd16(b *testing.B) {
	var wall, slowest time.Duration
	var upBytes, unique int64
	var blobGets int
	n := 0
	for b.Loop() {
		b.StopTimer()
		up := startUpstream(b, true, wan)
		up.Seed(b, benchRepo, benchTag, imageLayers, imageLayerSize)
		m := servertest.Start(b, up.URL())
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			blobs []v1.Descriptor
			worst time.Duration
		)
		gate := make(chan struct{})
		for range herdClients {
			wg.Go(func() {
				<-gate
				res, d := pull(b, m.Host(), true)
				mu.Lock()
				blobs, worst = res.Blobs, max(worst, d)
				mu.Unlock()
			})
		}
		b.StartTimer()
		start := time.Now()
		close(gate)
		wg.Wait()
		wall += time.Since(start)
		b.StopTimer()
		slowest += worst
		m.WaitIdle()
		upBytes += up.BlobBytes()
		unique += UniqueBytes(blobs)
		blobGets += up.Count(http.MethodGet, fixture.KindBlob)
		m.Stop()
		up.Stop()
		n++
		b.StartTimer()
	}
	b.ReportMetric(ms(wall)/float64(n), "ms/herd")
	b.ReportMetric(ms(slowest)/float64(n), "slowest-client-ms")
	b.ReportMetric(float64(upBytes)/float64(unique), "upstream-bytes/unique")
	b.ReportMetric(float64(blobGets)/float64(n), "upstream-blob-GETs/herd")
}

// The image of BenchmarkColdPullDocker: 10 layers of 4 MiB, as in the
// issue's "faster than direct" goal.
const (
	dockerRepo      = "library/docker10"
	dockerLayers    = 10
	dockerLayerSize = 4 << 20
	// warmRepo is the image a -running mirror served before.
	warmRepo = "library/warmup"
)

// pullWith pulls repo:benchTag from host with parallel blob downloads at a
// time (0: all at once), with a fresh connection pool; it returns the
// result and the time from the first ping to the last blob.
func pullWith(b *testing.B, host, repo string, parallel int) (PullResult, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tr := NewTransport(16)
	defer tr.CloseIdleConnections()
	start := time.Now()
	c, err := Login(ctx, host, repo, tr)
	if err != nil {
		b.Fatal(err)
	}
	res, err := c.Pull(ctx, benchTag, parallel, true)
	d := time.Since(start)
	if err != nil {
		b.Fatalf("pull from %s: %v", host, err)
	}
	return res, d
}

// BenchmarkColdPullDocker pulls a 10 x 4 MiB layer image through a fresh
// mirror of a fresh Docker Hub-like upstream, with a docker-like client:
// token handshake, then the blobs 3 at a time (dockerd's
// max-concurrent-downloads) in /p3, or all at once in /all. In the same
// iteration, untimed and in alternating order, the same client pulls
// straight from the upstream: x-direct is the paired ratio. login-ms,
// and manifest-ms split the mirror's pull: the handshake, the
// manifest in hand (each from the start). cpu-ms/pull is the CPU time
// the whole process (upstream, mirror, client) used from the mirror pull's
// start until the mirror is idle (blobs stored), direct-cpu-ms/pull the
// same for the direct pull, and mirror-cpu-ms/pull their difference: what
// the mirror costs, which moves much less with the machine's load than
// wall time. With the upstream in a process of its own
// (BENCH_UPSTREAM_PROC), upstream-cpu-ms/pull and
// direct-upstream-cpu-ms/pull are that process's CPU time for either pull
// (the mirror's background work included). The -noahead variants turn fetching ahead off: the mirror
// relies on its background fill alone. The -running variants pull the
// image through a mirror that has served another image of the same
// upstream just before (untimed): the image is cold, the mirror is not
// (it knows the upstream's challenge, as a mirror in service does), while
// the direct client does what each docker pull does, ping included.
// all-direct pairs a direct pull with a direct pull (the mirror idle): the
// benchmark's own run-to-run spread, to read x-direct against.
func BenchmarkColdPullDocker(b *testing.B) {
	for _, c := range []struct {
		name     string
		parallel int
		opts     []proxy.Option
		running  bool
		// direct: the timed pull is a second direct one, not through
		// the mirror: x-direct is then the benchmark's noise floor.
		direct bool
	}{
		{"p3", 3, nil, false, false}, {"all", 0, nil, false, false},
		// The same without fetching ahead: the mirror as it was.
		{"p3-noahead", 3, []proxy.Option{proxy.WithFetchAhead(false)}, false, false},
		{"all-noahead", 0, []proxy.Option{proxy.WithFetchAhead(false)}, false, false},
		{"p3-running", 3, nil, true, false}, {"all-running", 0, nil, true, false},
		{"all-direct", 0, nil, false, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			var cold, direct, login, manifest, dmanifest, cpu, dcpu, upcpu, dupcpu time.Duration
			upCPUKnown := placement().process
			var upBytes, unique int64
			var wt wireTimes
			n := 0
			for b.Loop() {
				b.StopTimer()
				up := startUpstream(b, true, wan)
				up.Seed(b, dockerRepo, benchTag, dockerLayers, dockerLayerSize)
				m := servertest.Start(b, up.URL(), c.opts...)
				if c.running {
					up.Seed(b, warmRepo, benchTag, 1, 1<<10)
					pullWith(b, m.Host(), warmRepo, c.parallel)
					m.WaitIdle()
				}
				directFirst := n%2 == 0
				upCPU := func() time.Duration { d, _ := up.CPU(); return d }
				pullDirect := func() {
					c0, u0 := cpuTime(), upCPU()
					res, d := pullWith(b, up.Host(), dockerRepo, c.parallel)
					dcpu += cpuTime() - c0
					dupcpu += upCPU() - u0
					direct += d
					dmanifest += d - res.BlobsAt + res.ManifestAt
					wt.add(res)
				}
				if directFirst {
					pullDirect()
				}
				up.ResetCounts()
				c0, u0 := cpuTime(), upCPU()
				b.StartTimer()
				host := m.Host()
				if c.direct {
					host = up.Host()
				}
				res, d := pullWith(b, host, dockerRepo, c.parallel)
				b.StopTimer()
				cold += d
				login += d - res.BlobsAt
				manifest += d - res.BlobsAt + res.ManifestAt
				m.WaitIdle()
				cpu += cpuTime() - c0
				upcpu += upCPU() - u0
				upBytes += up.BlobBytes()
				unique += UniqueBytes(res.Blobs)
				if !directFirst {
					pullDirect()
				}
				m.Stop()
				up.Stop()
				n++
				b.StartTimer()
			}
			b.ReportMetric(ms(cold)/float64(n), "ms/pull")
			b.ReportMetric(ms(direct)/float64(n), "direct-ms/pull")
			b.ReportMetric(float64(cold)/float64(direct), "x-direct")
			b.ReportMetric(ms(login)/float64(n), "login-ms")
			b.ReportMetric(ms(manifest)/float64(n), "manifest-ms")
			b.ReportMetric(ms(dmanifest)/float64(n), "direct-manifest-ms")
			b.ReportMetric(float64(upBytes)/float64(unique), "upstream-bytes/unique")
			b.ReportMetric(ms(cpu)/float64(n), "cpu-ms/pull")
			b.ReportMetric(ms(dcpu)/float64(n), "direct-cpu-ms/pull")
			b.ReportMetric(ms(cpu-dcpu)/float64(n), "mirror-cpu-ms/pull")
			if upCPUKnown {
				b.ReportMetric(ms(upcpu)/float64(n), "upstream-cpu-ms/pull")
				b.ReportMetric(ms(dupcpu)/float64(n), "direct-upstream-cpu-ms/pull")
			}
			wt.report(b)
		})
	}
}
