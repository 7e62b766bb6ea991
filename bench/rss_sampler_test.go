package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rssSample is the process's resident memory at one moment, in MiB:
// RssAnon is the heap and stacks, RssFile the mapped files' pages that are
// resident (bbolt's mmap of the index: page cache, reclaimable).
type rssSample struct{ rss, anon, file, live float64 }

// readRSS reads VmRSS, RssAnon and RssFile from /proc/self/status, and
// the live heap the last GC cycle measured.
func readRSS() rssSample {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return rssSample{}
	}
	var s rssSample
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			s.rss = kb / 1024
		case "RssAnon:":
			s.anon = kb / 1024
		case "RssFile:":
			s.file = kb / 1024
		}
	}
	s.live = float64(liveHeap()) / (1 << 20)
	return s
}

// rssSampler samples readRSS every few milliseconds and keeps each
// field's peak, overall and per named phase: VmHWM alone does not say
// whether a peak is heap or the index's mapped pages.
type rssSampler struct {
	stop chan struct{}
	done sync.WaitGroup

	// dump, if not nil, catches the mapped pages' peaks in the act.
	dump *rssDump

	mu     sync.Mutex
	peak   rssSample
	phase  string
	phases []string
	byName map[string]rssSample
}

func startRSSSampler(dump *rssDump) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), byName: map[string]rssSample{}, dump: dump}
	s.Phase("start")
	s.done.Go(func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	})
	return s
}

func (s *rssSampler) sample() {
	r := readRSS()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peak = maxSample(s.peak, r)
	s.byName[s.phase] = maxSample(s.byName[s.phase], r)
	if s.dump != nil {
		s.dump.check(s.phase, r) // under mu: the phase stays
	}
}

func maxSample(a, b rssSample) rssSample {
	return rssSample{max(a.rss, b.rss), max(a.anon, b.anon), max(a.file, b.file), max(a.live, b.live)}
}

// Phase starts a named phase (ending the previous one), sampled at once.
func (s *rssSampler) Phase(name string) {
	s.mu.Lock()
	s.phase = name
	s.phases = append(s.phases, name)
	s.mu.Unlock()
	s.sample()
}

// Stop stops sampling and returns the peaks, overall and per phase in
// the order they began.
func (s *rssSampler) Stop() (rssSample, []string, map[string]rssSample) {
	s.sample()
	close(s.stop)
	s.done.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.phases, s.byName
}

// rssDump catches a peak of the mapped pages in the act: with
// BENCH_SCALE_RSS_DUMP set to a file prefix, a sample whose RssFile is
// over BENCH_SCALE_RSS_DUMP_MIB (default 110) and 8 MiB over the last
// dump's writes the stacks of every goroutine and thread, and the
// mappings with over 1 MiB resident, to prefix-N (read as the dump is
// written, a few ms after the sample: a release meanwhile shows there).
// A peak's figure says that the pages were mapped; only what ran then
// says which read mapped them.
type rssDump struct {
	prefix string
	mib    float64
	last   float64
	n      int
}

// newRSSDump returns the dump BENCH_SCALE_RSS_DUMP asks for, or nil.
func newRSSDump(b *testing.B) *rssDump {
	prefix := os.Getenv("BENCH_SCALE_RSS_DUMP")
	if prefix == "" {
		return nil
	}
	d := &rssDump{prefix: prefix, mib: 110}
	if v := os.Getenv("BENCH_SCALE_RSS_DUMP_MIB"); v != "" {
		mib, err := strconv.ParseFloat(v, 64)
		if err != nil || mib <= 0 {
			b.Fatalf("BENCH_SCALE_RSS_DUMP_MIB: bad value %q", v)
		}
		d.mib = mib
	}
	return d
}

// check dumps the process if r is a new peak of the mapped pages over
// the threshold.
func (d *rssDump) check(phase string, r rssSample) {
	if r.file < d.mib || r.file < d.last+8 {
		return
	}
	d.last = r.file
	d.n++
	name := fmt.Sprintf("%s-%d", d.prefix, d.n)
	header := fmt.Sprintf("phase %s: VmRSS %.1f MiB, RssAnon %.1f, RssFile %.1f\n%s", phase, r.rss, r.anon, r.file, residentMappings())
	if err := dumpProcess(name, header); err != nil {
		fmt.Fprintf(os.Stderr, "rss dump: %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "rss dump: phase %s, RssFile %.1f MiB: %s\n", phase, r.file, name)
}

// residentMappings lists the process's mappings with over 1 MiB
// resident (/proc/self/smaps), one a line: resident KiB and the mapping.
func residentMappings() string {
	raw, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return err.Error()
	}
	var out strings.Builder
	var mapping string
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0:
		case !strings.HasSuffix(f[0], ":"):
			mapping = l
		case f[0] == "Rss:" && len(f) > 1:
			if kb, _ := strconv.Atoi(f[1]); kb > 1024 {
				fmt.Fprintf(&out, "%8d KiB %s\n", kb, mapping)
			}
		}
	}
	return out.String()
}
