// Package gcholdtest holds a GC percent of its own for the tests of what
// runs passes under a gchold.Hold (the process's is left alone).
package gcholdtest

import "sync"

// Percent is a gchold.Runtime whose percent is a value of its own.
type Percent struct {
	mu      sync.Mutex
	percent int
}

// NewPercent returns a Percent set to percent.
func NewPercent(percent int) *Percent { return &Percent{percent: percent} }

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
	return prev
}
