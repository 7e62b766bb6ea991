package gchold_test

import (
	"runtime/debug"
	"slices"
	"sync"
	"testing"

	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/gchold/gcholdtest"
)

// Nested and overlapping passes: the first in lowers the percent, it
// stays lowered while any pass runs, and the last out restores the prior
// value, once.
func TestHoldNestedAndOverlapping(t *testing.T) {
	rt := gcholdtest.NewPercent(100)
	h := gchold.NewFor(rt, 40)
	leaveA := h.Enter()
	if got := rt.GCPercent(); got != 40 {
		t.Fatalf("percent %d while a pass runs, want 40", got)
	}
	leaveB := h.Enter() // overlaps A
	leaveA()
	if got := rt.GCPercent(); got != 40 {
		t.Fatalf("percent %d after the first pass left and another still runs, want 40", got)
	}
	leaveC := h.Enter() // nested in B
	leaveC()
	leaveA() // a second leave does nothing
	if got := rt.GCPercent(); got != 40 {
		t.Fatalf("percent %d while the last pass still runs, want 40", got)
	}
	leaveB()
	if got, want := rt.Seen(), []int{100, 40, 100}; !slices.Equal(got, want) {
		t.Fatalf("percents in force %v, want %v: lowered once, restored once", got, want)
	}
	// A later pass lowers it again, from what is then in force.
	rt.SetGCPercent(150)
	leave := h.Enter()
	leave()
	if got, want := rt.Seen(), []int{100, 40, 100, 150, 40, 150}; !slices.Equal(got, want) {
		t.Fatalf("percents in force %v, want %v", got, want)
	}
}

// The operator's setting stands when it is off or already as low.
func TestHoldLeavesOperatorsSetting(t *testing.T) {
	for _, prior := range []int{-1, 10, 40} {
		rt := gcholdtest.NewPercent(prior)
		h := gchold.NewFor(rt, 40)
		leave := h.Enter()
		if got := rt.GCPercent(); got != prior {
			t.Errorf("GOGC=%d: percent %d while a pass runs, want it left alone", prior, got)
		}
		leave()
		if got := rt.Seen(); !slices.Equal(got, []int{prior}) {
			t.Errorf("GOGC=%d: percents in force %v, want it never set", prior, got)
		}
	}
}

// Passes entering and leaving at once: every pass runs at the lowered
// percent, and the prior one is back after the last.
func TestHoldConcurrentPasses(t *testing.T) {
	rt := gcholdtest.NewPercent(100)
	h := gchold.NewFor(rt, 25)
	var wg sync.WaitGroup
	errs := make(chan int, 64)
	for range 64 {
		wg.Go(func() {
			leave := h.Enter()
			defer leave()
			if p := rt.GCPercent(); p != 25 {
				errs <- p
			}
		})
	}
	wg.Wait()
	close(errs)
	for p := range errs {
		t.Errorf("a pass ran at percent %d, want 25", p)
	}
	if got := rt.GCPercent(); got != 100 {
		t.Errorf("percent %d after every pass, want 100", got)
	}
	h2 := rt.Seen()
	if h2[len(h2)-1] != 100 || len(h2)%2 != 1 {
		t.Errorf("percents in force %v: want lowered and restored in pairs, ending at 100", h2)
	}
}

// No hold (a percent of 0, or nil): nothing is changed.
func TestHoldOff(t *testing.T) {
	rt := gcholdtest.NewPercent(100)
	h := gchold.NewFor(rt, 0)
	if h != nil {
		t.Fatalf("NewFor(rt, 0) = %v, want nil (off)", h)
	}
	h.Enter()()
	if got := rt.Seen(); !slices.Equal(got, []int{100}) {
		t.Errorf("percents in force %v, want never set", got)
	}
	if h.Percent() != 0 {
		t.Errorf("nil hold's Percent %d, want 0", h.Percent())
	}
}

// The process's runtime: the percent read without setting it, lowered
// while a pass runs and restored after. Not parallel: the percent is the
// process's.
func TestHoldProcess(t *testing.T) {
	prior := debug.SetGCPercent(120)
	t.Cleanup(func() { debug.SetGCPercent(prior) })
	// memory_limit is the operator's too: a pass leaves it as it is.
	priorLimit := debug.SetMemoryLimit(448 << 20)
	t.Cleanup(func() { debug.SetMemoryLimit(priorLimit) })
	if got := (gchold.Process{}).GCPercent(); got != 120 {
		t.Fatalf("Process.GCPercent() = %d, want 120", got)
	}
	h := gchold.New(30)
	leave := h.Enter()
	inPass := debug.SetGCPercent(30)
	limitInPass := debug.SetMemoryLimit(-1)
	leave()
	if limitInPass != 448<<20 {
		t.Errorf("memory limit %d while a pass ran, want memory_limit's %d", limitInPass, 448<<20)
	}
	if inPass != 30 {
		t.Errorf("GC percent %d while a pass ran, want 30", inPass)
	}
	if got := (gchold.Process{}).GCPercent(); got != 120 {
		t.Errorf("GC percent %d after the pass, want 120 back", got)
	}
	debug.SetGCPercent(-1)
	if got := (gchold.Process{}).GCPercent(); got >= 0 {
		t.Errorf("Process.GCPercent() = %d with the GC off, want < 0", got)
	}
	debug.SetGCPercent(120)
}

// Watch's busy runs when the first of overlapping passes enters and idle
// when the last leaves, once each per stretch of passes, whatever the
// percent in force; a nil Hold calls neither.
func TestHoldWatch(t *testing.T) {
	for _, start := range []int{100, 20, -1} {
		h := gchold.NewFor(gcholdtest.NewPercent(start), 50)
		var calls []string
		h.Watch(func() { calls = append(calls, "busy") }, func() { calls = append(calls, "idle") })
		a := h.Enter()
		b := h.Enter()
		a()
		a() // a second call does nothing
		if want := []string{"busy"}; !slices.Equal(calls, want) {
			t.Fatalf("GOGC %d, a pass still running: calls %v, want %v", start, calls, want)
		}
		b()
		h.Enter()()
		if want := []string{"busy", "idle", "busy", "idle"}; !slices.Equal(calls, want) {
			t.Fatalf("GOGC %d: calls %v, want %v", start, calls, want)
		}
	}
	var nilHold *gchold.Hold
	nilHold.Watch(func() { t.Fatal("busy on a nil Hold") }, func() { t.Fatal("idle on a nil Hold") })
	nilHold.Enter()()
}
