package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	xtrace "golang.org/x/exp/trace"

	"github.com/docker-mirror/docker-mirror/storage"
)

// flight is a flight recorder of the runtime's execution trace, started
// if BENCH_SCALE_TRACE=PREFIX is set: each of the index's slow writes (up
// to maxFlightSnapshots) writes the last seconds of the trace to
// PREFIX-N, and the benchmark's log says where the write's goroutine spent
// its time (traceSlowWrite): running, runnable (waiting for a P: the Go
// scheduler), in system calls (which), or blocked. A goroutine running
// may still wait for a CPU: the trace does not see the OS's scheduler.
type flight struct {
	rec    *trace.FlightRecorder
	prefix string
	mu     sync.Mutex
	n      int
}

// maxFlightSnapshots bounds the trace snapshots of one benchmark.
const maxFlightSnapshots = 8

// scaleFlight starts the flight recorder if BENCH_SCALE_TRACE is set (nil
// otherwise, or if one already runs: one per benchmark iteration, whose
// server logs the slow writes), stopped when b ends.
func scaleFlight(b *testing.B) *flight {
	prefix := os.Getenv("BENCH_SCALE_TRACE")
	if prefix == "" {
		return nil
	}
	rec := trace.NewFlightRecorder(trace.FlightRecorderConfig{MinAge: 2 * time.Second, MaxBytes: 64 << 20})
	if err := rec.Start(); err != nil {
		b.Logf("BENCH_SCALE_TRACE: no flight recorder for this server (-benchtime=1x has one per size): %v", err)
		return nil
	}
	b.Cleanup(rec.Stop)
	// The CPU profiler's samples go into the execution trace too: what a
	// write computed, not only that it ran. A millisecond of CPU a
	// sample (the default is ten; StartCPUProfile, asking for the
	// default, prints that it cannot change the rate, and keeps this).
	runtime.SetCPUProfileRate(cpuSampleHz)
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		b.Logf("BENCH_SCALE_TRACE: no CPU samples in the traces: %v", err)
	} else {
		b.Cleanup(pprof.StopCPUProfile)
	}
	return &flight{rec: rec, prefix: prefix}
}

// cpuSampleHz is the CPU profiler's rate while the recorder runs.
const cpuSampleHz = 1000

// slowWrote is called with each log line: a slow index write's has the
// recorder's window written out and summed up in b's log.
func (f *flight) slowWrote(b *testing.B, line []byte) {
	if f == nil || !bytes.Contains(line, []byte("slow index write")) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n >= maxFlightSnapshots {
		return
	}
	f.n++
	path := fmt.Sprintf("%s-%d", f.prefix, f.n)
	var buf bytes.Buffer
	if _, err := f.rec.WriteTo(&buf); err != nil {
		b.Log(err)
		return
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		b.Log(err)
		return
	}
	w, err := traceSlowWrite(&buf)
	if err != nil {
		b.Logf("trace %s: %v", path, err)
		return
	}
	b.Logf("trace %s: %s", path, w)
}

// goState is a state a goroutine entered in the trace, when, why, and
// the stack that entered it (read only for the stretches reported).
type goState struct {
	at     xtrace.Time
	state  xtrace.GoState
	stack  xtrace.Stack
	reason string
}

// writeTrace is where the goroutine of an "index write" region (storage's
// update) spent the region: its time in each state, and its stretches
// off a P, longest first.
type writeTrace struct {
	total time.Duration
	in    map[xtrace.GoState]time.Duration
	off   []offP
	// assist is the time it spent assisting the GC (while running);
	// preempted, how many times the scheduler took its P.
	assist    time.Duration
	preempted int
	// samples counts the CPU profiler's samples of the goroutine in the
	// region by where they were taken (ourFrame).
	samples map[string]int
}

// offP is a stretch of a goroutine off a P, and what it called last (ourFrame).
type offP struct {
	d     time.Duration
	state xtrace.GoState
	by    string
}

// traceSlowWrite reads the longest "index write" region in a trace.
func traceSlowWrite(r io.Reader) (writeTrace, error) {
	rd, err := xtrace.NewReader(r)
	if err != nil {
		return writeTrace{}, err
	}
	states := map[xtrace.GoID][]goState{}
	begun := map[xtrace.GoID]xtrace.Time{}
	// The goroutines' GC assists: begun, and done ([begin, end) pairs).
	assisting := map[xtrace.GoID]xtrace.Time{}
	assists := map[xtrace.GoID][][2]xtrace.Time{}
	// The CPU samples of every goroutine (which is the region's is known
	// only at the end).
	type sample struct {
		g     xtrace.GoID
		at    xtrace.Time
		stack xtrace.Stack
	}
	var samples []sample
	var g xtrace.GoID
	var from, to xtrace.Time
	for {
		ev, err := rd.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return writeTrace{}, err
		}
		switch ev.Kind() {
		case xtrace.EventStackSample:
			samples = append(samples, sample{ev.Goroutine(), ev.Time(), ev.Stack()})
		case xtrace.EventRegionBegin:
			if ev.Region().Type == storage.WriteRegion {
				begun[ev.Goroutine()] = ev.Time()
			}
		case xtrace.EventRegionEnd:
			if t0, ok := begun[ev.Goroutine()]; ok && ev.Region().Type == storage.WriteRegion {
				if ev.Time().Sub(t0) > to.Sub(from) {
					g, from, to = ev.Goroutine(), t0, ev.Time()
				}
				delete(begun, ev.Goroutine())
			}
		case xtrace.EventRangeBegin, xtrace.EventRangeActive, xtrace.EventRangeEnd:
			rg := ev.Range()
			if rg.Name != "GC mark assist" || rg.Scope.Kind != xtrace.ResourceGoroutine {
				continue
			}
			id := rg.Scope.Goroutine()
			if ev.Kind() != xtrace.EventRangeEnd {
				assisting[id] = ev.Time()
			} else if t0, ok := assisting[id]; ok {
				assists[id] = append(assists[id], [2]xtrace.Time{t0, ev.Time()})
				delete(assisting, id)
			}
		case xtrace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != xtrace.ResourceGoroutine {
				continue
			}
			_, next := st.Goroutine()
			id := st.Resource.Goroutine()
			states[id] = append(states[id], goState{at: ev.Time(), state: next, stack: ev.Stack(), reason: st.Reason})
		}
	}
	if to == 0 {
		return writeTrace{}, fmt.Errorf("no %s region in the trace", storage.WriteRegion)
	}
	w := writeTrace{total: to.Sub(from), in: map[xtrace.GoState]time.Duration{}, samples: map[string]int{}}
	for _, s := range samples {
		if s.g == g && s.at >= from && s.at <= to {
			w.samples[ourFrame(s.stack)]++
		}
	}
	// In the region the goroutine is running (it began it).
	cur := goState{at: from, state: xtrace.GoRunning}
	add := func(until xtrace.Time) {
		start := max(cur.at, from)
		if until <= start {
			return
		}
		d := until.Sub(start)
		w.in[cur.state] += d
		if cur.state != xtrace.GoRunning {
			w.off = append(w.off, offP{d, cur.state, ourFrame(cur.stack)})
		}
	}
	for _, s := range states[g] {
		if s.at > to {
			break
		}
		if s.at > from {
			add(s.at)
			if s.reason == "preempted" {
				w.preempted++
			}
		}
		cur = s
	}
	add(to)
	for _, a := range assists[g] {
		if lo, hi := max(a[0], from), min(a[1], to); hi > lo {
			w.assist += hi.Sub(lo)
		}
	}
	slices.SortFunc(w.off, func(a, b offP) int { return int(b.d - a.d) })
	return w, nil
}

func (w writeTrace) String() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }
	var sb strings.Builder
	fmt.Fprintf(&sb, "longest index write %s: running %s (GC assist %s), runnable %s (preempted %d times), syscall %s, waiting %s; longest off a P:",
		ms(w.total), ms(w.in[xtrace.GoRunning]), ms(w.assist), ms(w.in[xtrace.GoRunnable]), w.preempted, ms(w.in[xtrace.GoSyscall]), ms(w.in[xtrace.GoWaiting]))
	for _, s := range w.off[:min(3, len(w.off))] {
		fmt.Fprintf(&sb, " %s %s", s.state, ms(s.d))
		if s.by != "" {
			fmt.Fprintf(&sb, " (%s)", s.by)
		}
	}
	fmt.Fprintf(&sb, "; CPU samples %d:", w.sampled())
	for _, at := range w.sampledMost(5) {
		fmt.Fprintf(&sb, " %s %d", at, w.samples[at])
	}
	return sb.String()
}

// sampled is how many CPU samples the region's goroutine had.
func (w writeTrace) sampled() (n int) {
	for _, c := range w.samples {
		n += c
	}
	return n
}

// sampledMost names the n places with the most CPU samples, most first.
func (w writeTrace) sampledMost(n int) []string {
	at := slices.Collect(maps.Keys(w.samples))
	slices.SortFunc(at, func(a, b string) int {
		if c := w.samples[b] - w.samples[a]; c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return at[:min(n, len(at))]
}

// ourFrame names the innermost frame of a stack in this module or bbolt,
// with the system call or runtime function it called ("" if none).
func ourFrame(st xtrace.Stack) string {
	var inner string
	for f := range st.Frames() {
		if strings.Contains(f.Func, "docker-mirror/") || strings.Contains(f.Func, "bbolt") {
			name := f.Func[strings.LastIndex(f.Func, "/")+1:]
			if inner != "" {
				return name + " -> " + inner
			}
			return name
		}
		if inner == "" || strings.HasPrefix(f.Func, "syscall.") {
			inner = f.Func[strings.LastIndex(f.Func, "/")+1:]
		}
	}
	return inner
}

// TestTraceSlowWrite reads a trace of an "index write" region whose
// goroutine makes a system call and computes: its states add up to the
// region, the system call is a stretch off a P named after its caller,
// the CPU profiler's samples name the computation, and a longer region
// of another type is not the one read.
func TestTraceSlowWrite(t *testing.T) {
	runtime.SetCPUProfileRate(cpuSampleHz)
	sampling := pprof.StartCPUProfile(io.Discard) == nil // not if go test -cpuprofile
	if sampling {
		defer pprof.StopCPUProfile()
	}
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skip(err) // another trace runs (go test -trace)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		other := trace.StartRegion(context.Background(), "other")
		region := trace.StartRegion(context.Background(), storage.WriteRegion)
		_ = f.Sync()
		if sampling {
			// 30 ms of CPU: ~30 samples, the profiler's clock being
			// the thread's CPU time.
			spinCPU(30 * time.Millisecond)
		}
		region.End()
		_ = f.Sync()
		other.End()
	}()
	<-done
	trace.Stop()
	w, err := traceSlowWrite(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var sum time.Duration
	for _, d := range w.in {
		sum += d
	}
	if sum != w.total || w.total <= 0 {
		t.Errorf("states add up to %v in a region of %v: %v", sum, w.total, w)
	}
	syncs := 0
	for _, s := range w.off {
		if s.state == xtrace.GoSyscall && strings.Contains(s.by, "TestTraceSlowWrite") && strings.Contains(s.by, "Fsync") {
			syncs++
		}
	}
	if syncs != 1 {
		t.Errorf("%d system calls named after their caller in the region, want 1: %v", syncs, w)
	}
	if !sampling {
		return
	}
	spun := 0
	for at, n := range w.samples {
		if strings.HasPrefix(at, "bench.spinCPU") || strings.HasPrefix(at, "bench.threadCPU") {
			spun += n
		}
	}
	if spun == 0 {
		t.Errorf("no CPU sample of the region names its computation: %v", w)
	}
}

// spinCPU computes until its thread has used d more CPU (at once if it
// cannot tell): the profiler's clock, whatever else the process runs.
func spinCPU(d time.Duration) (x int) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	end := threadCPU() + d
	for threadCPU() < end && end > d {
		for i := range 100_000 {
			x ^= i * i
		}
	}
	return x
}
