//go:build !linux

package bench

import "time"

// threadCPU is the process's CPU time (cpuTime): only Linux tells a
// thread's.
func threadCPU() time.Duration { return cpuTime() }
