package bench

import (
	"os"
	"strconv"
	"strings"
	"sync"
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

	mu     sync.Mutex
	peak   rssSample
	phase  string
	phases []string
	byName map[string]rssSample
}

func startRSSSampler() *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), byName: map[string]rssSample{}}
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
