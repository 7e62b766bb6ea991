package bench

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// scaleCache returns a data directory holding a synthetic cache of n
// images, a copy of the one kept under BENCH_SCALE_CACHE if it is set
// (synthCache), so that a 100k cache (minutes to build) serves many runs
// and the latency runs' writes (the pulls' times and counts) stay theirs.
func scaleCache(b *testing.B, n int) string {
	dir := b.TempDir()
	synthCache(b, dir, n)
	return dir
}

// latencyPart is one part of a manifest-by-tag request (or the whole of
// one), timed alone: its latencies and minor page faults per call.
type latencyPart struct {
	name string
	lat  latencies
	// faults is the minor page faults per call, cpu the process's CPU
	// time per call (the server's, the client's, and anything running
	// meanwhile: background work a call started counts).
	faults float64
	cpu    time.Duration
}

// timePart calls f k times and times each call.
func timePart(b *testing.B, name string, k int, f func(i int) error) latencyPart {
	lat := make(latencies, 0, k)
	faults, cpu := minorFaults(), cpuTime()
	for i := range k {
		start := time.Now()
		if err := f(i); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		lat = append(lat, time.Since(start))
	}
	return latencyPart{name: name, lat: lat, faults: float64(minorFaults()-faults) / float64(k), cpu: (cpuTime() - cpu) / time.Duration(k)}
}

// latencyRound is what one round measured at one size.
type latencyRound struct {
	parts map[string]latencyPart
	// rssFile is the process's RssFile (MiB) after the requests, and
	// rssFilePeak its peak during them (sampled every 5 ms); heap is the
	// Go heap (MiB) and gcs the GC cycles so far at the end of the round.
	rssFile, rssFilePeak, heap float64
	gcs                        uint32
	// warm is how long reading what the round reads into the page cache
	// took (warmCache).
	warm time.Duration
	// During the requests: the GC's CPU (the runtime's estimate, all of
	// its classes: background workers, assists, pauses) and the CPU time
	// available to the process (GOMAXPROCS times the wall time: the
	// runtime's /cpu/classes/total), per request, the GC cycles
	// completed, and the live heap the last of them marked (MiB). The
	// runtime takes its CPU figures at each GC cycle's end, so they cover
	// the cycles that ended during the requests (from the one before):
	// per request they are approximate, their ratio is the GC's share.
	gcCPU, cpu time.Duration
	reqGCs     uint64
	liveHeap   float64
}

// gcCounters reads the runtime's GC figures that scaleLatencyRound reports.
type gcCounters struct {
	gcCPU, cpu time.Duration
	cycles     uint64
	live       uint64
}

func readGCCounters() gcCounters {
	s := []metrics.Sample{
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/cpu/classes/total:cpu-seconds"},
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/gc/heap/live:bytes"},
	}
	metrics.Read(s)
	sec := func(v metrics.Value) time.Duration { return time.Duration(v.Float64() * float64(time.Second)) }
	return gcCounters{gcCPU: sec(s[0].Value), cpu: sec(s[1].Value), cycles: s[2].Value.Uint64(), live: s[3].Value.Uint64()}
}

// scaleLatencyRound starts a server on the cache in dir (n images),
// warms it up as BenchmarkScale does, and times k manifest-by-tag and k
// blob-hit GETs (alternating), a GET /v2/ (the HTTP, routing and client
// part alone), and the index's and the store's parts of a manifest by tag
// called directly on the server's Index and Store (the fill record read
// alone, Fill, and as a hit checks it, FillComplete: from memory for a
// fill read complete before, e.g. by the start-up scan).
func scaleLatencyRound(b *testing.B, dir string, n, k int, upURL string, seed uint64) latencyRound {
	cfg := servertest.Config(b, dir, []servertest.Upstream{{Host: "docker.io", URL: upURL}})
	cfg.TagTTL = config.Duration(1000 * time.Hour)
	// The last round's (or the build's) garbage is not this server's.
	debug.FreeOSMemory()
	ctx := context.Background()
	srv, err := server.New(ctx, cfg, server.WithLogger(scaleLogger(b)))
	if err == nil {
		err = srv.Start(ctx)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := srv.Close(); err != nil {
			b.Error(err)
		}
	}()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	pcg := mrand.NewPCG(seed, uint64(n))
	rng := mrand.New(pcg)
	// BENCH_SCALE_HOT draws the requests from the first images only, as
	// a real mirror's pulls are skewed (roundFiles draws the same).
	hot := min(int(envInt("BENCH_SCALE_HOT", 0)), n)
	c := &scaleClient{hc: &http.Client{Transport: NewTransport(4)}, base: hs.URL, n: n, rng: rng, hot: hot}
	<-srv.Scanned()             // the memos' full read, in the background since Start
	measure(b, 200, c.manifest) // warm up the connection and the page cache
	measure(b, 100, c.blob)

	// The images the parts look up, resolved now: by the time the parts
	// run, the requests below have made the watcher drop their pages
	// (at 100k), as a request finds them.
	type image struct {
		repo, tag string
		manifest  digest.Digest
		blob      digest.Digest
	}
	pool := make([]image, 6*k)
	for i := range pool {
		j := rng.IntN(n)
		repo, _ := synthImage(j)
		rec, ok, err := srv.Index.Tag(synthHost, repo, fmt.Sprintf("v%d-%d", j, rng.IntN(synthTags)))
		if err != nil || !ok {
			b.Fatalf("image %d: %v %v", j, ok, err)
		}
		// Another of its tags, for the tag lookups.
		pool[i] = image{repo, fmt.Sprintf("v%d-%d", j, rng.IntN(synthTags)), rec.Digest, digest.Digest(digestOfBytes(synthBlob(j, rng.IntN(synthLayers))))}
	}
	pick := func() []image {
		imgs := pool[:k]
		pool = pool[k:]
		return imgs
	}

	// What this round reads, into the page cache (warmCache): the
	// requests' files, the parts' manifests, the index.
	files, drawn := roundFiles(b, srv.Index, dir, n, hot, k, *pcg)
	for _, img := range pool {
		files = append(files, storeFile(dir, img.manifest))
	}
	out := latencyRound{parts: map[string]latencyPart{}, warm: warmCache(b, dir, files)}
	gc0 := readGCCounters()
	sampler := startRSSSampler(nil)
	reqs := map[string]func() (time.Duration, error){"GET manifest by tag": c.manifest, "GET blob": c.blob}
	got := map[string]*latencyPart{}
	for range k {
		for _, name := range []string{"GET manifest by tag", "GET blob"} {
			p := got[name]
			if p == nil {
				p = &latencyPart{name: name}
				got[name] = p
			}
			faults, cpu := minorFaults(), cpuTime()
			d, err := reqs[name]()
			if err != nil {
				b.Fatal(err)
			}
			p.lat = append(p.lat, d)
			p.faults += float64(minorFaults()-faults) / float64(k)
			p.cpu += (cpuTime() - cpu) / time.Duration(k)
		}
	}
	gc1 := readGCCounters()
	if *pcg != drawn {
		// The client drew what roundFiles drew only if its generator
		// ends where roundFiles' copy ended.
		b.Fatal("the requests drew other images than roundFiles warmed")
	}
	out.gcCPU, out.cpu = (gc1.gcCPU-gc0.gcCPU)/time.Duration(2*k), (gc1.cpu-gc0.cpu)/time.Duration(2*k)
	out.reqGCs, out.liveHeap = gc1.cycles-gc0.cycles, float64(gc1.live)/(1<<20)
	scaleProfile(b, fmt.Sprintf("latency-%d", n))
	for name, p := range got {
		out.parts[name] = *p
	}
	peak, _, _ := sampler.Stop()
	out.rssFile, out.rssFilePeak = readRSS().file, peak.file

	ix, st := srv.Index, srv.Store
	add := func(p latencyPart) { out.parts[p.name] = p }
	add(timePart(b, "GET /v2/", k, func(int) error {
		resp, err := c.hc.Get(hs.URL + "/v2/")
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil
	}))
	imgs := pick()
	add(timePart(b, "index: tag", k, func(i int) error {
		_, _, err := ix.Tag(synthHost, imgs[i].repo, imgs[i].tag)
		return err
	}))
	// The same images: the tag as a hit reads it, from the tag memo.
	add(timePart(b, "index: tag hit (TagHit)", k, func(i int) error {
		_, _, err := ix.TagHit(synthHost, imgs[i].repo, imgs[i].tag)
		return err
	}))
	imgs = pick()
	add(timePart(b, "index: manifest record", k, func(i int) error {
		_, _, err := ix.Manifest(imgs[i].manifest)
		return err
	}))
	imgs = pick()
	add(timePart(b, "index: fill record", k, func(i int) error {
		_, _, err := ix.Fill(synthHost, imgs[i].repo, imgs[i].manifest)
		return err
	}))
	// The same images (the pool is drawn as the base harness drew it, so
	// that both draw the same requests): a fill the start-up scan read
	// complete is answered from memory, whatever the lookup before read.
	add(timePart(b, "index: fill check (FillComplete)", k, func(i int) error {
		_, _, err := ix.FillComplete(synthHost, imgs[i].repo, imgs[i].manifest)
		return err
	}))
	imgs = pick()
	now := time.Now()
	add(timePart(b, "index: last pull (TouchManifest)", k, func(i int) error {
		return ix.TouchManifest(imgs[i].manifest, now)
	}))
	imgs = pick()
	add(timePart(b, "index: blob record", k, func(i int) error {
		_, _, err := ix.Blob(imgs[i].blob)
		return err
	}))
	imgs = pick()
	add(timePart(b, "store: read the manifest", k, func(i int) error {
		rc, err := st.Open(ctx, imgs[i].repo, imgs[i].manifest, 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.ReadAll(rc)
		return err
	}))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out.heap, out.gcs = float64(ms.HeapAlloc)/(1<<20), ms.NumGC
	return out
}

// BenchmarkScaleLatency is BenchmarkScale's latency step alone, made to
// compare sizes: for BENCH_SCALE_ROUNDS rounds (default 6), each size of
// BENCH_SCALE_IMAGES in turn (the order rotated every round) starts a
// server on its synthetic cache, warms it up, and times
// BENCH_SCALE_SAMPLES (default 500) manifest-by-tag and blob GETs,
// alternating, then the parts of a manifest by tag alone: the HTTP path
// (GET /v2/), each index lookup, the store's read. It logs, per size and
// part, the median and range of the rounds' p50s and the pooled p50 and
// p99, with minor page faults per call; it reports the pooled p50/p99 and
// the median over rounds of the ratio of each size's p50 to the first
// size's (the same round: the fairest comparison on a shared machine).
// BENCH_SCALE_CACHE keeps the caches between runs (see scaleCache);
// BENCH_SCALE_HOT=N draws the requests from the first N images alone (a
// skewed draw, as a real mirror's pulls are; the parts are drawn from all).
// Each round first reads the files it will read and the index into the
// page cache (warmCache), and logs the GC's CPU per request and the live
// heap during its requests; the rounds run under a pprof label images=N,
// so that a CPU profile (-test.cpuprofile) splits by size, and with
// BENCH_SCALE_PROFILE set each round writes a heap profile at the end of
// its requests.
// One server runs at a time: the mapped-pages watcher of one index would
// otherwise drop the pages of the other's.
func BenchmarkScaleLatency(b *testing.B) {
	sizes := scaleSizes(b)
	rounds := int(envInt("BENCH_SCALE_ROUNDS", 6))
	k := int(envInt("BENCH_SCALE_SAMPLES", 500))
	dirs := map[int]string{}
	for _, n := range sizes {
		dirs[n] = scaleCache(b, n)
	}
	up := fixture.StartUpstream(b)
	for b.Loop() {
		b.StopTimer()
		got := map[int][]latencyRound{}
		for r := range rounds {
			for j := range sizes {
				n := sizes[(j+r)%len(sizes)]
				// Labelled by size, for a CPU profile (-test.cpuprofile;
				// pprof -tagfocus images=N).
				pprof.Do(context.Background(), pprof.Labels("images", strconv.Itoa(n)), func(context.Context) {
					got[n] = append(got[n], scaleLatencyRound(b, dirs[n], n, k, up.URL(), uint64(r+1)))
				})
			}
		}
		b.StartTimer()
		reportScaleLatency(b, sizes, got)
	}
}

// warmCache reads the index in dir and the stored files at paths into
// the page cache, so that what a round reads is there at every size, as
// the 1k cache's few files always are. This machine's kernel pages out
// file pages that no mapping holds and nothing read for about a minute
// (DAMON's `pageout` of unmapped pages): at 100k images (400,000 files,
// a 960 MB index whose leaves the requests read with pread) a third of a
// random sample of the files had nothing resident, and a hit on one read
// the disk (~100–200 µs), which no size of the index accounts for (round
// 9). It returns how long that took.
func warmCache(b *testing.B, dir string, paths []string) time.Duration {
	start := time.Now()
	for _, path := range append(paths, filepath.Join(dir, "index.db")) {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// storeFile is where the cache in dir stores dgst's bytes.
func storeFile(dir string, dgst digest.Digest) string {
	hex := dgst.Encoded()
	return filepath.Join(dir, "blobs", string(dgst.Algorithm()), hex[:2], hex, "data")
}

// roundFiles returns the stored files the requests of a round will read:
// k manifests by tag and k blobs, drawn as scaleClient draws them (from
// the first hot of the n images if hot > 0) from a copy of its
// generator's state (checked once they ran: see scaleLatencyRound: the
// state after them is end), the manifests' digests looked up in ix.
func roundFiles(b *testing.B, ix *storage.Index, dir string, n, hot, k int, state mrand.PCG) (paths []string, end mrand.PCG) {
	rng := mrand.New(&state)
	paths = make([]string, 0, 2*k)
	if hot > 0 {
		n = hot
	}
	for range k {
		i := rng.IntN(n)
		repo, _ := synthImage(i)
		rec, ok, err := ix.Tag(synthHost, repo, fmt.Sprintf("v%d-%d", i, rng.IntN(synthTags)))
		if err != nil || !ok {
			b.Fatalf("image %d: %v %v", i, ok, err)
		}
		paths = append(paths, storeFile(dir, rec.Digest))
		i = rng.IntN(n)
		paths = append(paths, storeFile(dir, digest.FromBytes(synthBlob(i, rng.IntN(synthLayers)))))
	}
	return paths, state
}

// logLine logs a line of the benchmark's figures, also on stderr: a
// benchmark's log is cut at 10 lines, and the 100k figures come after
// the 1k ones.
func logLine(b *testing.B, format string, args ...any) {
	b.Helper()
	line := fmt.Sprintf(format, args...)
	b.Log(line)
	fmt.Fprintln(os.Stderr, line)
}

// reportScaleLatency logs and reports BenchmarkScaleLatency's figures.
func reportScaleLatency(b *testing.B, sizes []int, got map[int][]latencyRound) {
	first := got[sizes[0]]
	var names []string
	for name := range first[0].parts {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, n := range sizes {
		var files, peaks, heaps []float64
		var gcs []uint32
		for _, r := range got[n] {
			files = append(files, r.rssFile)
			peaks = append(peaks, r.rssFilePeak)
			heaps = append(heaps, r.heap)
			gcs = append(gcs, r.gcs)
		}
		logLine(b, "images=%d: each round: RssFile after the requests %.0f MiB, peak during them %.0f MiB; heap at the end %.0f MiB, GC cycles so far %d", n, files, peaks, heaps, gcs)
		var warm []time.Duration
		for _, r := range got[n] {
			warm = append(warm, r.warm.Round(time.Millisecond))
		}
		logLine(b, "images=%d: each round: its files and the index read into the page cache first in %v", n, warm)
		var gcCPU, cpu, share []float64
		var reqGCs []uint64
		var live []float64
		for _, r := range got[n] {
			gcCPU, cpu = append(gcCPU, us(r.gcCPU)), append(cpu, us(r.cpu))
			if r.cpu > 0 {
				share = append(share, 100*float64(r.gcCPU)/float64(r.cpu))
			}
			reqGCs, live = append(reqGCs, r.reqGCs), append(live, r.liveHeap)
		}
		logLine(b, "images=%d: each round's requests: GC CPU %.1f µs/request of %.1f µs/request available (GOMAXPROCS × wall time; the GC's share %.1f%%), GC cycles %d, live heap %.0f MiB", n, gcCPU, cpu, share, reqGCs, live)
		for _, name := range names {
			var p50s []float64
			var pooled latencies
			var faults float64
			var cpu time.Duration
			for _, r := range got[n] {
				p := r.parts[name]
				p50s = append(p50s, us(p.lat.pct(0.5)))
				pooled = append(pooled, p.lat...)
				faults += p.faults / float64(len(got[n]))
				cpu += p.cpu / time.Duration(len(got[n]))
			}
			slices.Sort(p50s)
			logLine(b, "images=%-6d %-34s p50 %6.1f µs [rounds %6.1f–%6.1f, median %6.1f], p99 %7.1f µs, %.2f minflt/call, CPU %6.1f µs/call",
				n, name, us(pooled.pct(0.5)), p50s[0], p50s[len(p50s)-1], p50s[len(p50s)/2], us(pooled.pct(0.99)), faults, us(cpu))
		}
	}
	for _, n := range sizes {
		for _, req := range []string{"GET manifest by tag", "GET blob"} {
			var pooled latencies
			var ratios []float64
			for i, r := range got[n] {
				pooled = append(pooled, r.parts[req].lat...)
				ratios = append(ratios, float64(r.parts[req].lat.pct(0.5))/float64(first[i].parts[req].lat.pct(0.5)))
			}
			slices.Sort(ratios)
			short := map[string]string{"GET manifest by tag": "manifest", "GET blob": "blob"}[req]
			b.ReportMetric(us(pooled.pct(0.5)), fmt.Sprintf("%s-p50-µs/images=%d", short, n))
			b.ReportMetric(us(pooled.pct(0.99)), fmt.Sprintf("%s-p99-µs/images=%d", short, n))
			if n != sizes[0] {
				b.ReportMetric(ratios[len(ratios)/2], fmt.Sprintf("%s-p50-ratio/images=%d", short, n))
				logLine(b, "images=%d %s p50 / images=%d's, per round: %.3f", n, short, sizes[0], ratios)
			}
		}
	}
}
