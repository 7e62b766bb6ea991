package bench

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the user+system CPU time the calling thread has used so
// far (RUSAGE_THREAD), or the process's if the kernel does not say.
func threadCPU() time.Duration {
	if d, ok := usedCPU(unix.RUSAGE_THREAD); ok {
		return d
	}
	return cpuTime()
}
