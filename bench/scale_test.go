package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
	bolt "go.etcd.io/bbolt"
)

// scaleSizes are the cache sizes (images) of BenchmarkScale:
// BENCH_SCALE_IMAGES overrides them, e.g. "1000,10000,100000".
func scaleSizes(b *testing.B) []int {
	v := os.Getenv("BENCH_SCALE_IMAGES")
	if v == "" {
		v = "1000,10000"
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("BENCH_SCALE_IMAGES: bad size %q", f)
		}
		out = append(out, n)
	}
	return out
}

// latencies are request durations, summarised as percentiles.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// scaleClient GETs manifests by tag and blobs of a synthetic cache.
type scaleClient struct {
	hc   *http.Client
	base string
	n    int
	rng  *mrand.Rand
	// hot, if > 0, limits the images asked for to the first hot (pinned,
	// so that an eviction keeps them).
	hot int
}

func (c *scaleClient) image() int {
	if c.hot > 0 {
		return c.rng.IntN(c.hot)
	}
	return c.rng.IntN(c.n)
}

func (c *scaleClient) get(url string, accept bool) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if accept {
		req.Header.Set("Accept", oci.Accept)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := copyBody(discard{}, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Cache") != "hit" {
		return fmt.Errorf("GET %s: %s, X-Cache %q", url, resp.Status, resp.Header.Get("X-Cache"))
	}
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// manifest GETs the manifest of a random image by one of its tags.
func (c *scaleClient) manifest() (time.Duration, error) {
	i := c.image()
	repo, _ := synthImage(i)
	url := fmt.Sprintf("%s/v2/%s/manifests/v%d-%d", c.base, repo, i, c.rng.IntN(synthTags))
	start := time.Now()
	err := c.get(url, true)
	return time.Since(start), err
}

// blob GETs a random layer of a random image.
func (c *scaleClient) blob() (time.Duration, error) {
	i := c.image()
	repo, _ := synthImage(i)
	url := fmt.Sprintf("%s/v2/%s/blobs/%s", c.base, repo, digestOfBytes(synthBlob(i, c.rng.IntN(synthLayers))))
	start := time.Now()
	err := c.get(url, false)
	return time.Since(start), err
}

// measure runs f k times and returns the latencies.
func measure(b *testing.B, k int, f func() (time.Duration, error)) latencies {
	out := make(latencies, 0, k)
	for range k {
		d, err := f()
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// during runs f (a collection or an eviction) while a client pulls
// manifests and blobs in a loop; it returns f's duration and the pulls'
// latencies meanwhile (sequential, so that a pull waiting for the index's
// write lock shows in them).
func during(b *testing.B, c *scaleClient, f func() error) (time.Duration, latencies) {
	stalls := newStallWatch(b)
	stop := make(chan struct{})
	var lat latencies
	var wg sync.WaitGroup
	var perr error
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			done := stalls.watch("a pull during a pass")
			d, err := c.manifest()
			done()
			if err != nil {
				perr = err
				return
			}
			lat = append(lat, d)
		}
	})
	start := time.Now()
	err := f()
	d := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil {
		b.Fatal(err)
	}
	if perr != nil {
		b.Fatalf("pull during the pass: %v", perr)
	}
	return d, lat
}

// peakRSS reads the process's peak RSS (VmHWM) in MiB.
func peakRSS() float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// getStatusImages GETs the status page's image list (its JSON API), the
// first page sorted by size, and checks that it lists images.
func getStatusImages(base string, n int) error {
	resp, err := http.Get(base + "/api/v1/images?sort=size")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var page struct {
		Total  int               `json:"total"`
		Images []json.RawMessage `json:"images"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK || len(page.Images) == 0 || page.Total != n {
		return fmt.Errorf("GET /api/v1/images: %s, %d of %d images, error %v", resp.Status, len(page.Images), page.Total, err)
	}
	return nil
}

// resetPeakRSS resets VmHWM to the current RSS (Linux clear_refs).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// BenchmarkScale measures the costs that must stay flat as the cache
// grows, on a synthetic cache of 1k and 10k images (BENCH_SCALE_IMAGES):
// start-up (server.New and Start on the data directory), manifest-by-tag
// and blob-hit latency (p50, p99 of 2,000 sequential GETs over a kept-alive
// connection), ls (Collector.Images), a collection pass with nothing to
// collect, an eviction pass down to half the store, the pulls' p99 while
// each pass runs, the status page's image list (GET /api/v1/images, its
// first build), and the process's peak RSS from start-up on (building
// the cache excluded): VmHWM, and the peaks of RssAnon (heap) and RssFile
// (mapped files: the index) sampled every 5 ms, logged per step. The cache is built untimed; it is not pulled.
// BENCH_SCALE_CACHE=DIR keeps the built cache in DIR for the next runs
// (see synthCache: each run's copy of the index is written back before
// the start, untimed); BENCH_SCALE_MEMORY_LIMIT=SIZE sets the runtime's
// soft memory limit, as memory_limit does; the GC percent is lowered
// while a pass runs as serve lowers it (pass_gc_percent's default;
// BENCH_SCALE_PASS_GC_PERCENT=N sets it, 0 leaves it alone). The GC's
// CPU time and cycles during the collection and the eviction are
// reported; BENCH_SCALE_CPUPROFILE=PREFIX writes CPU profiles of the
// start-up, ls, the status list, the collection and the eviction to
// PREFIX-start, -ls, -status, -gc and -evict. BENCH_SCALE_STALL (stallWatch) and BENCH_SCALE_RSS_DUMP
// (rssDump) write the stacks of a slow pull and of a peak of the mapped
// pages; BENCH_SCALE_TRACE (flight) the execution trace of the index's
// slow writes, summed up in the log.
func BenchmarkScale(b *testing.B) {
	for _, n := range scaleSizes(b) {
		b.Run(fmt.Sprintf("images=%d", n), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				built := time.Now()
				total := synthCache(b, dir, n)
				b.Logf("built %d images (%d MB) in %v", n, total/1e6, time.Since(built).Round(time.Millisecond))
				logIndexSize(b, dir, "built")
				up := fixture.StartUpstream(b)
				cfg := servertest.Config(b, dir, []servertest.Upstream{{Host: "docker.io", URL: up.URL()}})
				cfg.TagTTL = config.Duration(1000 * time.Hour)
				// memory_limit, as serve applies it (server.New does not).
				if v := os.Getenv("BENCH_SCALE_MEMORY_LIMIT"); v != "" {
					z, err := config.ParseSize(v)
					if err != nil {
						b.Fatalf("BENCH_SCALE_MEMORY_LIMIT: %v", err)
					}
					defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(z)))
					b.Logf("memory limit %s", z)
				}
				// pass_gc_percent, as serve applies it (server.New does
				// not); BENCH_SCALE_PASS_GC_PERCENT overrides its default.
				if v := os.Getenv("BENCH_SCALE_PASS_GC_PERCENT"); v != "" {
					p, err := strconv.Atoi(v)
					if err != nil {
						b.Fatalf("BENCH_SCALE_PASS_GC_PERCENT: %v", err)
					}
					cfg.PassGCPercent = p
				}
				hold := gchold.New(cfg.PassGCPercent)
				b.Logf("GC percent while a pass runs: %d (0: unchanged)", hold.Percent())
				// The build's garbage is not the server's: return it to
				// the OS before measuring.
				debug.FreeOSMemory()
				resetPeakRSS()
				sampler := startRSSSampler(newRSSDump(b))
				b.StartTimer()

				ctx := context.Background()
				startProfiled := scaleCPUProfile(b, "start")
				start := time.Now()
				srv, err := server.New(ctx, cfg, server.WithLogger(scaleLogger(b)), server.WithGCHold(hold))
				if err == nil {
					err = srv.Start(ctx)
				}
				startup := time.Since(start)
				startProfiled()
				if err != nil {
					b.Fatal(err)
				}
				scaleProfile(b, "start")
				hs := httptest.NewServer(srv.Handler())
				c := &scaleClient{hc: &http.Client{Transport: NewTransport(4)}, base: hs.URL, n: n, rng: mrand.New(mrand.NewPCG(1, uint64(n)))}
				<-srv.Scanned() // the memos' full read, in the background since Start
				sampler.Phase("latency")
				measure(b, 200, c.manifest) // warm up the connection and the page cache
				man := measure(b, 2000, c.manifest)
				blob := measure(b, 2000, c.blob)

				sampler.Phase("ls")
				lsProfiled := scalePeakProfile(b, "ls")
				lsCPU := scaleCPUProfile(b, "ls")
				start = time.Now()
				images, err := srv.Collector.Images(ctx)
				ls := time.Since(start)
				lsCPU()
				lsProfiled()
				if err != nil || len(images) != n {
					b.Fatalf("ls: %d images, error %v", len(images), err)
				}
				// The status page's image list: its first visit builds it
				// (Collector.Images, pulls, referrers, three orders).
				scaleProfile(b, "ls")
				sampler.Phase("status")
				statusCPU := scaleCPUProfile(b, "status")
				start = time.Now()
				if err := getStatusImages(hs.URL, n); err != nil {
					b.Fatal(err)
				}
				statusJSON := time.Since(start)
				statusCPU()
				scaleProfile(b, "status")
				// The pulls during the passes ask for pinned images only:
				// the eviction must keep them.
				const hot = 50
				// The first pin is the first index write after the reads
				// of every stored manifest (its commit's fdatasync writes
				// whatever those reads left for the journal).
				var firstPin time.Duration
				for i := range hot {
					repo, tag := synthImage(i)
					start := time.Now()
					if err := srv.Collector.Pin(b.Context(), storage.TagKey(synthHost, repo, tag), "bench"); err != nil {
						b.Fatal(err)
					}
					if i == 0 {
						firstPin = time.Since(start)
					}
				}
				c.hot = hot
				var gcWrite, evictWrite time.Duration
				sampler.Phase("gc")
				gcProfiled := scaleCPUProfile(b, "gc")
				gcCPU := readGCCPU()
				gcWrites := srv.Index.WriteTotals()
				gc, gcPulls := during(b, c, func() error {
					r, err := srv.Collector.Collect(ctx)
					gcWrite = r.LongestWrite
					if err == nil && r.BlobsRemoved+r.ManifestsRemoved != 0 {
						err = fmt.Errorf("collection removed %+v from a cache where everything is tagged", r)
					}
					return err
				})
				gcCPU = readGCCPU().since(gcCPU)
				gcWrote := wrote(gcWrites, srv.Index.WriteTotals())
				gcProfiled()
				var evicted int
				sampler.Phase("evict")
				evictProfiled := scalePeakProfile(b, "evict")
				evictCPUProfiled := scaleCPUProfile(b, "evict")
				evictCPU := readGCCPU()
				evictWrites := srv.Index.WriteTotals()
				evict, evictPulls := during(b, c, func() error {
					r, err := srv.Collector.Evict(ctx, total/2, 0, time.Now())
					// Blobs the latency runs served are within the grace
					// period and stay; the images go.
					if err == nil && r.ImagesEvicted < n/4 {
						err = fmt.Errorf("eviction evicted %d images of %d", r.ImagesEvicted, n)
					}
					evicted = r.ImagesEvicted
					evictWrite = r.LongestWrite
					return err
				})
				b.StopTimer()
				evictWrote := wrote(evictWrites, srv.Index.WriteTotals())
				evictCPU = readGCCPU().since(evictCPU)
				evictCPUProfiled()
				evictProfiled()
				logIndexSize(b, dir, "after the eviction")
				rss := peakRSS()
				peak, phases, byPhase := sampler.Stop()
				for _, p := range phases {
					r := byPhase[p]
					line := fmt.Sprintf("RSS peak during %-7s VmRSS %6.0f MiB, RssAnon %6.0f MiB, RssFile %6.0f MiB, live heap %6.0f MiB", p, r.rss, r.anon, r.file, r.live)
					b.Log(line)
					// Also on stderr: a benchmark's log is cut at 10
					// lines, and the server's warnings may come first.
					fmt.Fprintln(os.Stderr, line)
				}
				hs.Close()
				if err := srv.Close(); err != nil {
					b.Error(err)
				}

				b.ReportMetric(ms(startup), "startup-ms")
				b.ReportMetric(ms(firstPin), "first-pin-ms")
				b.ReportMetric(us(man.pct(0.5)), "manifest-p50-µs")
				b.ReportMetric(us(man.pct(0.99)), "manifest-p99-µs")
				b.ReportMetric(us(blob.pct(0.5)), "blob-p50-µs")
				b.ReportMetric(us(blob.pct(0.99)), "blob-p99-µs")
				b.ReportMetric(ms(ls), "ls-ms")
				b.ReportMetric(ms(gc), "gc-ms")
				b.ReportMetric(us(gcPulls.pct(0.5)), "pull-p50-during-gc-µs")
				b.ReportMetric(us(gcPulls.pct(0.99)), "pull-p99-during-gc-µs")
				b.ReportMetric(ms(evict), "evict-ms")
				b.ReportMetric(float64(evicted), "images-evicted")
				b.ReportMetric(us(evictPulls.pct(0.5)), "pull-p50-during-evict-µs")
				b.ReportMetric(us(evictPulls.pct(0.99)), "pull-p99-during-evict-µs")
				b.ReportMetric(ms(evictPulls.pct(1)), "pull-max-during-evict-ms")
				b.ReportMetric(gcCPU.gc, "gc-cpu-during-gc-s")
				b.ReportMetric(gcCPU.cycles, "gc-cycles-during-gc")
				b.ReportMetric(evictCPU.gc, "gc-cpu-during-evict-s")
				b.ReportMetric(evictCPU.cycles, "gc-cycles-during-evict")
				b.ReportMetric(ms(gcWrite), "gc-longest-write-ms")
				b.ReportMetric(ms(evictWrite), "evict-longest-write-ms")
				gcWrote.report(b, "gc")
				evictWrote.report(b, "evict")
				b.ReportMetric(ms(statusJSON), "status-json-ms")
				b.ReportMetric(rss, "peak-RSS-MiB")
				b.ReportMetric(peak.anon, "peak-RssAnon-MiB")
				b.ReportMetric(peak.file, "peak-RssFile-MiB")
				b.ReportMetric(peak.live, "peak-live-heap-MiB")
				b.StartTimer()
			}
		})
	}
}

// scaleProfile writes the heap profile (what the last GC found live) to
// BENCH_SCALE_PROFILE-step if that is set.
func scaleProfile(b *testing.B, step string) {
	prefix := os.Getenv("BENCH_SCALE_PROFILE")
	if prefix == "" {
		return
	}
	runtime.GC()
	f, err := os.Create(prefix + "-" + step)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// scaleCPUProfile writes a CPU profile of a step to
// BENCH_SCALE_CPUPROFILE-step if that is set; call the function it
// returns when the step ends.
func scaleCPUProfile(b *testing.B, step string) func() {
	prefix := os.Getenv("BENCH_SCALE_CPUPROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "-" + step)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// gcWork is the GC's CPU time (the runtime's estimate: background
// workers, assists paid by allocating goroutines and pauses, in CPU
// seconds) and its cycles, from the process's start.
type gcWork struct{ gc, cycles float64 }

// readGCCPU reads gcWork from runtime/metrics.
func readGCCPU() gcWork {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return gcWork{gc: s[0].Value.Float64(), cycles: float64(s[1].Value.Uint64())}
}

// since is the GC work done from w0 to w.
func (w gcWork) since(w0 gcWork) gcWork {
	return gcWork{gc: w.gc - w0.gc, cycles: w.cycles - w0.cycles}
}

// scalePeakProfile writes the heap profile at the live heap's peak
// during a step (BENCH_SCALE_PROFILE-step-peak, if that is set): each
// time the live heap the last GC measured grows 5% past the last
// profile. Call the function it returns when the step ends.
func scalePeakProfile(b *testing.B, step string) func() {
	prefix := os.Getenv("BENCH_SCALE_PROFILE")
	if prefix == "" {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		var profiled uint64
		for {
			if live := liveHeap(); live > profiled+profiled/20 {
				profiled = live
				if f, err := os.Create(prefix + "-" + step + "-peak"); err == nil {
					_ = pprof.WriteHeapProfile(f)
					f.Close()
				}
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	return func() {
		close(stop)
		wg.Wait()
	}
}

// synthCache puts a synthetic cache of n images in dir. With
// BENCH_SCALE_CACHE set (a directory on dir's file system), the cache is
// built there once per size and each run gets a copy: the index copied,
// the store's files hard-linked (the mirror never writes a stored file
// in place; it removes them, which leaves the built cache's links).
func synthCache(b *testing.B, dir string, n int) int64 {
	base := os.Getenv("BENCH_SCALE_CACHE")
	if base == "" {
		return buildSynthCache(b, dir, n)
	}
	built := filepath.Join(base, fmt.Sprintf("images-%d", n))
	raw, err := os.ReadFile(filepath.Join(built, "total"))
	if err != nil {
		tmp := built + ".tmp"
		if err := os.RemoveAll(tmp); err != nil {
			b.Fatal(err)
		}
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			b.Fatal(err)
		}
		total := buildSynthCache(b, tmp, n)
		if err := os.WriteFile(filepath.Join(tmp, "total"), []byte(strconv.FormatInt(total, 10)), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, built); err != nil {
			b.Fatal(err)
		}
		raw = []byte(strconv.FormatInt(total, 10))
	}
	total, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		b.Fatalf("%s: %v", built, err)
	}
	for _, sub := range []string{"blobs", storage.OwnDir} {
		if out, err := exec.Command("cp", "-al", filepath.Join(built, sub), dir).CombinedOutput(); err != nil {
			b.Fatalf("copying the built cache: %v: %s", err, out)
		}
	}
	if out, err := exec.Command("cp", filepath.Join(built, "index.db"), dir).CombinedOutput(); err != nil {
		b.Fatalf("copying the built index: %v: %s", err, out)
	}
	syncIndex(b, dir)
	return total
}

// syncIndex writes the copied index in dir back before the start: the
// copy leaves ~1 GB of the page cache dirty at 100k, and the start's
// first commit (its fsync) would write it all, which a restart of a
// server never finds (round 10, at 100k: a start of 830–906 ms, 30–89
// written back).
func syncIndex(b *testing.B, dir string) {
	f, err := os.Open(filepath.Join(dir, "index.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// crashDuringPass leaves the index in dir as a crash during a pass of the
// lifecycle leaves it (storage.Index.BeginPass): its last commit has no
// freelist.
func crashDuringPass(b *testing.B, dir string) {
	path := filepath.Join(dir, "index.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true})
	if err == nil {
		err = db.Update(func(*bolt.Tx) error { return nil })
		err = errors.Join(err, db.Close())
	}
	if err != nil {
		b.Fatal(err)
	}
	syncIndex(b, dir)
}

// dropPages drops the file at path from the page cache (its pages are
// clean: written and synced).
func dropPages(b *testing.B, path string) {
	if out, err := exec.Command("dd", "if="+path, "iflag=nocache", "count=0").CombinedOutput(); err != nil {
		b.Fatalf("dropping the pages of %s: %v: %s", path, err, out)
	}
}

// BenchmarkScaleMemory measures the live heap the lifecycle's passes hold
// on a synthetic cache (BENCH_MEM_IMAGES images, default 10,000): ls
// (Collector.Images), a collection with nothing to collect, and an
// eviction of half the store. The GC runs at GOGC=10 meanwhile and the
// live heap after each cycle is sampled, so that its peak (minus the live
// heap before the pass) is close to what the pass holds at once:
// reported as peak-live-B/image; -benchmem's B/op is what it allocates in
// all. Each iteration of evict builds its cache anew (untimed).
func BenchmarkScaleMemory(b *testing.B) {
	n := 10000
	if v := os.Getenv("BENCH_MEM_IMAGES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("BENCH_MEM_IMAGES: bad size %q", v)
		}
	}
	if os.Getenv("BENCH_MEM_PROFILE") != "" {
		runtime.MemProfileRate = 4 << 10
	}
	open := func(b *testing.B) (*lifecycle.Collector, int64, func()) {
		b.Helper()
		dir := b.TempDir()
		total := buildSynthCache(b, dir, n)
		ctx := context.Background()
		store, err := storage.OpenDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": dir})
		if err != nil {
			b.Fatal(err)
		}
		ix, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
		if err != nil {
			b.Fatal(err)
		}
		return lifecycle.New(store, ix, lifecycle.Options{Grace: lifecycle.DefaultGrace}), total, func() { ix.Close() }
	}
	run := func(b *testing.B, each bool, pass func(*lifecycle.Collector, int64) error) {
		var c *lifecycle.Collector
		var total int64
		var closeIx func()
		if !each {
			c, total, closeIx = open(b)
			defer closeIx()
		}
		var peak uint64
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if each {
				b.StopTimer()
				c, total, closeIx = open(b)
				b.StartTimer()
			}
			live := measureLive(func() {
				if err := pass(c, total); err != nil {
					b.Fatal(err)
				}
			})
			peak = max(peak, live)
			if each {
				b.StopTimer()
				closeIx()
				b.StartTimer()
			}
		}
		b.ReportMetric(float64(peak)/float64(n), "peak-live-B/image")
		b.ReportMetric(float64(peak)/(1<<20), "peak-live-MiB")
	}
	ctx := context.Background()
	b.Run(fmt.Sprintf("images=%d/ls", n), func(b *testing.B) {
		run(b, false, func(c *lifecycle.Collector, _ int64) error {
			images, err := c.Images(ctx)
			if err == nil && len(images) != n {
				err = fmt.Errorf("ls: %d images", len(images))
			}
			return err
		})
	})
	b.Run(fmt.Sprintf("images=%d/gc", n), func(b *testing.B) {
		run(b, false, func(c *lifecycle.Collector, _ int64) error {
			r, err := c.Collect(ctx)
			if err == nil && r.BlobsRemoved+r.ManifestsRemoved != 0 {
				err = fmt.Errorf("collection removed %+v", r)
			}
			return err
		})
	})
	b.Run(fmt.Sprintf("images=%d/evict", n), func(b *testing.B) {
		run(b, true, func(c *lifecycle.Collector, total int64) error {
			r, err := c.Evict(ctx, total/2, 0, time.Now())
			if err == nil && r.ImagesEvicted < n/4 {
				err = fmt.Errorf("eviction evicted %d images of %d", r.ImagesEvicted, n)
			}
			return err
		})
	})
}

// measureLive runs f with the GC at GOGC=10 and returns the peak of the
// live heap (as the GC cycles measured it) over the live heap before f.
// With BENCH_MEM_PROFILE set, the heap profile at the peak (the cycle
// that measured it) is written to that file.
func measureLive(f func()) uint64 {
	profile := os.Getenv("BENCH_MEM_PROFILE")
	var profiled uint64
	// Twice: what finalizers kept alive in the first goes in the second.
	runtime.GC()
	runtime.GC()
	before := liveHeap()
	old := debug.SetGCPercent(10)
	defer debug.SetGCPercent(old)
	stop := make(chan struct{})
	var peak uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, liveHeap())
			if profile != "" && peak > profiled+profiled/20 {
				profiled = peak
				if pf, err := os.Create(profile); err == nil {
					_ = pprof.WriteHeapProfile(pf)
					pf.Close()
				}
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	f()
	close(stop)
	wg.Wait()
	if peak < before {
		return 0
	}
	return peak - before
}

// liveHeap is the live heap the last GC cycle measured.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// scaleLogger is the logger of BenchmarkScale's server: its warnings
// (e.g. the index's slow writes, with where their time went) go to the
// benchmark's log, the rest nowhere.
func scaleLogger(b *testing.B) *slog.Logger {
	return slog.New(slog.NewTextHandler(benchLogWriter{b, scaleFlight(b)}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// benchLogWriter writes each log line to b.Log, and shows the index's
// slow writes to flight (if not nil: BENCH_SCALE_TRACE).
type benchLogWriter struct {
	b      *testing.B
	flight *flight
}

func (w benchLogWriter) Write(p []byte) (int, error) {
	w.b.Log(strings.TrimSuffix(string(p), "\n"))
	w.flight.slowWrote(w.b, p)
	return len(p), nil
}

// logIndexSize logs the size of the index file in dir (bbolt remaps it
// when it outgrows its mapping).
func logIndexSize(b *testing.B, dir, when string) {
	if fi, err := os.Stat(filepath.Join(dir, "index.db")); err == nil {
		b.Logf("index.db %s: %d bytes", when, fi.Size())
	}
}

// BenchmarkScaleStart measures a start on a synthetic cache
// (BENCH_SCALE_IMAGES, BENCH_SCALE_CACHE as BenchmarkScale), each
// iteration on a fresh copy of its index (see startCache): server.New and Start (startup-ms, as
// BenchmarkScale's), the first manifest answered (first-answer-ms, from
// the start on: what a client waits for), and the stored total known
// (stored-known-ms: StoredBytes returns, which the lifecycle's passes,
// the status page and the stored-bytes gauge read). With
// BENCH_SCALE_CPUPROFILE=PREFIX, the first iteration's start is
// profiled to PREFIX-start. With BENCH_SCALE_START_CRASHED=1, each copy is
// left as a crash during a pass leaves it (crashDuringPass): the start
// rebuilds bbolt's freelist first (its walk maps every page of the index:
// peak-RSS-MiB, the process's VmHWM). With BENCH_SCALE_START_COLD=1, the
// copy's pages are dropped from the page cache (GNU dd's nocache), as
// after a reboot.
func BenchmarkScaleStart(b *testing.B) {
	for _, n := range scaleSizes(b) {
		b.Run(fmt.Sprintf("images=%d", n), func(b *testing.B) {
			var startup, first, known time.Duration
			iter := 0
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				startCache(b, dir, n)
				if os.Getenv("BENCH_SCALE_START_CRASHED") == "1" {
					crashDuringPass(b, dir)
				}
				if os.Getenv("BENCH_SCALE_START_COLD") == "1" {
					dropPages(b, filepath.Join(dir, "index.db"))
				}
				up := fixture.StartUpstream(b)
				cfg := servertest.Config(b, dir, []servertest.Upstream{{Host: "docker.io", URL: up.URL()}})
				cfg.TagTTL = config.Duration(1000 * time.Hour)
				profiled := func() {}
				if iter == 0 {
					profiled = scaleCPUProfile(b, "start")
				}
				iter++
				ctx, cancel := context.WithCancel(context.Background())
				b.StartTimer()

				start := time.Now()
				srv, err := server.New(ctx, cfg, server.WithLogger(scaleLogger(b)))
				if err == nil {
					err = srv.Start(ctx)
				}
				startup += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				hs := httptest.NewServer(srv.Handler())
				c := &scaleClient{hc: &http.Client{Transport: NewTransport(1)}, base: hs.URL, n: n, rng: mrand.New(mrand.NewPCG(2, uint64(iter)))}
				if _, err := c.manifest(); err != nil {
					b.Fatal(err)
				}
				first += time.Since(start)
				if srv.Index.StoredBytes() <= 0 {
					b.Fatal("nothing stored")
				}
				known += time.Since(start)

				b.StopTimer()
				profiled()
				hs.Close()
				cancel()
				if err := srv.Close(); err != nil {
					b.Error(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(ms(startup)/float64(iter), "startup-ms")
			b.ReportMetric(ms(first)/float64(iter), "first-answer-ms")
			b.ReportMetric(ms(known)/float64(iter), "stored-known-ms")
			b.ReportMetric(peakRSS(), "peak-RSS-MiB")
		})
	}
}

// startCache puts a synthetic cache of n images in dir for a start: a
// copy of the index, and the store's files from BENCH_SCALE_START_STORE
// if that is set (a directory holding a copy of the built cache's blobs,
// e.g. `cp -al`; dir's blobs link to it), else copied as synthCache
// copies them. A start and one pull write nothing in the store, and
// linking and removing 300k files costs minutes an iteration.
func startCache(b *testing.B, dir string, n int) {
	store := os.Getenv("BENCH_SCALE_START_STORE")
	base := os.Getenv("BENCH_SCALE_CACHE")
	if store == "" || base == "" {
		synthCache(b, dir, n)
		return
	}
	built := filepath.Join(base, fmt.Sprintf("images-%d", n))
	if err := os.Symlink(filepath.Join(store, "blobs"), filepath.Join(dir, "blobs")); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", filepath.Join(built, storage.OwnDir), filepath.Join(built, "index.db"), dir).CombinedOutput(); err != nil {
		b.Fatalf("copying the built index: %v: %s", err, out)
	}
	syncIndex(b, dir)
}

// passWrites is what a pass's write transactions (and the pulls' beside
// it) committed: the difference of the index's totals.
type passWrites storage.WriteTotals

func wrote(before, after storage.WriteTotals) passWrites {
	return passWrites{Commits: after.Commits - before.Commits, Pages: after.Pages - before.Pages, Held: after.Held - before.Held,
		CPU: after.CPU - before.CPU, Faults: after.Faults - before.Faults}
}

// report reports the commits, the pages each wrote on average, the time
// they held the write lock in all, and the CPU time and page faults of
// their threads meanwhile.
func (w passWrites) report(b *testing.B, pass string) {
	b.ReportMetric(float64(w.Commits), pass+"-commits")
	if w.Commits > 0 {
		b.ReportMetric(float64(w.Pages)/float64(w.Commits), pass+"-pages-per-commit")
	}
	b.ReportMetric(w.Held.Seconds(), pass+"-write-held-s")
	b.ReportMetric(w.CPU.Seconds(), pass+"-write-cpu-s")
	b.ReportMetric(float64(w.Faults), pass+"-write-faults")
}
