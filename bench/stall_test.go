package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stallWatch catches a slow pull in the act: with BENCH_SCALE_STALL set
// to a file prefix, a pull still running after BENCH_SCALE_STALL_MS
// (default 300) writes every goroutine's stack and every thread's kernel
// stack (where it waits: a lock, the disk, a page fault) to
// prefix-N, and again at three times that if it still runs. A latency's
// maximum says a pull was slow; only the stacks while it is say why.
type stallWatch struct {
	prefix string
	after  time.Duration
	n      atomic.Int64
}

// newStallWatch returns the watch BENCH_SCALE_STALL asks for, or nil.
func newStallWatch(b *testing.B) *stallWatch {
	prefix := os.Getenv("BENCH_SCALE_STALL")
	if prefix == "" {
		return nil
	}
	after := 300 * time.Millisecond
	if v := os.Getenv("BENCH_SCALE_STALL_MS"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			b.Fatalf("BENCH_SCALE_STALL_MS: bad value %q", v)
		}
		after = time.Duration(ms) * time.Millisecond
	}
	return &stallWatch{prefix: prefix, after: after}
}

// watch starts watching one pull (what names it); call the function it
// returns when the pull ends. A nil watch does nothing.
func (w *stallWatch) watch(what string) func() {
	if w == nil {
		return func() {}
	}
	start := time.Now()
	first := time.AfterFunc(w.after, func() { w.dump(what, start) })
	again := time.AfterFunc(3*w.after, func() { w.dump(what, start) })
	return func() {
		first.Stop()
		again.Stop()
		if d := time.Since(start); d >= w.after {
			fmt.Fprintf(os.Stderr, "stall: %s took %v (from %s)\n", what, d, start.Format(time.RFC3339Nano))
		}
	}
}

// dump writes the process's goroutines and threads to the next file.
func (w *stallWatch) dump(what string, start time.Time) {
	name := fmt.Sprintf("%s-%d", w.prefix, w.n.Add(1))
	header := fmt.Sprintf("%s running for %v (from %s)", what, time.Since(start), start.Format(time.RFC3339Nano))
	if err := dumpProcess(name, header); err != nil {
		fmt.Fprintf(os.Stderr, "stall: %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "stall: %s running for %v: %s\n", what, time.Since(start), name)
}

// dumpProcess writes header, the load and pressure-stall figures, every
// thread's kernel stack and state, and every goroutine's stack to name.
func dumpProcess(name, header string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\n\n", header)
	for _, file := range []string{"loadavg", "pressure/io", "pressure/memory", "pressure/cpu"} {
		if raw, err := os.ReadFile(filepath.Join("/proc", file)); err == nil {
			fmt.Fprintf(f, "/proc/%s: %s", file, raw)
		}
	}
	tasks, _ := filepath.Glob("/proc/self/task/*")
	for _, t := range tasks {
		var parts []string
		for _, file := range []string{"comm", "wchan", "stat", "stack"} {
			raw, _ := os.ReadFile(filepath.Join(t, file))
			parts = append(parts, strings.TrimSpace(string(raw)))
		}
		fmt.Fprintf(f, "\nthread %s: %s\n", filepath.Base(t), strings.Join(parts, "\n"))
	}
	fmt.Fprintln(f)
	return pprof.Lookup("goroutine").WriteTo(f, 2)
}
