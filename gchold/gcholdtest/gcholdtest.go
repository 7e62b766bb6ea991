// Package gcholdtest holds a GC percent of its own for the tests of what
// runs passes under a gchold.Hold (the process's is left alone).
package gcholdtest

import (
	"slices"
	"sync"
)

// Percent is a gchold.Runtime whose percent is a value of its own, and
// which remembers every value it was set to.
type Percent struct {
	mu      sync.Mutex
	percent int
	history []int // the percents in force, in order
}

// NewPercent returns a Percent set to percent.
func NewPercent(percent int) *Percent { return &Percent{percent: percent, history: []int{percent}} }

// GCPercent returns the percent in force.
func (p *Percent) GCPercent() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.percent
}

// SetGCPercent sets the percent and returns the previous one.
func (p *Percent) SetGCPercent(percent int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := p.percent
	p.percent = percent
	p.history = append(p.history, percent)
	return prev
}

// Seen returns the percents in force since NewPercent, in order.
func (p *Percent) Seen() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.history)
}
