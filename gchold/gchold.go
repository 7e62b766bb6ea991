// Package gchold lowers the garbage collector's percent (GOGC) while a
// long pass runs (a collection, an eviction, an image list build) and
// restores it when the last running pass ends. A pass builds a large
// heap for seconds to minutes; at the default percent the process's
// resident heap grows to about twice what is live while it runs, and
// that is the process's peak. Between passes the heap is small and the
// default percent costs little memory and less CPU than a lower one.
//
// A Hold is made once per process (serve makes it) and handed to what
// runs passes; it keeps a count of the passes running. The first to
// enter lowers the percent, the last to leave restores what was there
// before it. The operator's setting stands when it is already as low or
// lower, or off (GOGC=off, which leaves the pace to the memory limit).
// The soft memory limit (memory_limit, GOMEMLIMIT) is left alone: the GC
// runs at whichever of the two asks first. What else gives memory up for
// the passes' sake watches the Hold (Watch): told when the first pass
// enters and when the last leaves.
package gchold

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Runtime reads and sets the GC percent: the process's (Process), or a
// fake in tests.
type Runtime interface {
	// GCPercent returns the percent in force; negative if the GC is off.
	GCPercent() int
	// SetGCPercent sets the percent and returns the previous one, as
	// debug.SetGCPercent does.
	SetGCPercent(percent int) int
}

// Process is the Go runtime of this process.
type Process struct{}

// gogcMetric is the runtime's GOGC as the runtime/metrics package reads
// it: read without setting it (debug.SetGCPercent only reads by
// writing).
const gogcMetric = "/gc/gogc:percent"

// GCPercent reads the percent in force (runtime/metrics).
func (Process) GCPercent() int {
	s := []metrics.Sample{{Name: gogcMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return -1 // not expected (Go >= 1.21 has it): a Hold then leaves the percent alone
	}
	v := s[0].Value.Uint64()
	if v > math.MaxInt32 {
		return -1 // off reads as the largest uint64
	}
	return int(v)
}

// SetGCPercent is debug.SetGCPercent.
func (Process) SetGCPercent(percent int) int { return debug.SetGCPercent(percent) }

// Hold lowers the GC percent while passes run. A nil *Hold holds
// nothing: Enter returns a leave that does nothing.
type Hold struct {
	percent int
	rt      Runtime

	mu sync.Mutex
	// running counts the passes between Enter and their leave.
	running int
	// prior is the percent the first pass in found, restored by the
	// last out; lowered says the first pass in did lower it.
	prior   int
	lowered bool
	// busy and idle are Watch's.
	busy, idle func()
}

// New returns a Hold that lowers the process's GC percent to percent
// while passes run; nil (no hold) if percent <= 0.
func New(percent int) *Hold { return NewFor(Process{}, percent) }

// NewFor is New on rt.
func NewFor(rt Runtime, percent int) *Hold {
	if percent <= 0 {
		return nil
	}
	return &Hold{percent: percent, rt: rt}
}

// Percent is the percent a Hold lowers to; 0 for a nil Hold.
func (h *Hold) Percent() int {
	if h == nil {
		return 0
	}
	return h.percent
}

// Watch has busy called when the first pass enters (before Enter
// returns) and idle when the last leaves (before its leave returns),
// each with the Hold's lock held: neither may enter a pass. Call it once,
// before passes run.
func (h *Hold) Watch(busy, idle func()) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.busy, h.idle = busy, idle
}

// Enter marks a pass as running, lowering the GC percent if it is the
// first; call leave (once; later calls do nothing) when the pass ends.
func (h *Hold) Enter() (leave func()) {
	if h == nil {
		return func() {}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running == 0 {
		cur := h.rt.GCPercent()
		h.lowered = cur > h.percent // GOGC=off (< 0) and lower settings stand
		if h.lowered {
			h.prior = h.rt.SetGCPercent(h.percent)
		}
		if h.busy != nil {
			h.busy()
		}
	}
	h.running++
	var once sync.Once
	return func() { once.Do(h.leave) }
}

// leave ends a pass; the last out restores the prior percent.
func (h *Hold) leave() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.running--
	if h.running > 0 {
		return
	}
	if h.lowered {
		h.rt.SetGCPercent(h.prior)
		h.lowered = false
	}
	if h.idle != nil {
		h.idle()
	}
}
