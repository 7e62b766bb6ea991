//go:build !unix

package bench

import "time"

// cpuTime is not measured on this platform: the CPU figures read 0.
func cpuTime() time.Duration { return 0 }

// minorFaults is not known here.
func minorFaults() int64 { return 0 }
