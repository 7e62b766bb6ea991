package storage

import (
	"syscall"
	"time"
)

// threadUsage is the calling thread's CPU time and page faults so far
// (ok false if unknown): with the goroutine locked to its thread, what a
// write transaction spent on the CPU, as against waiting for one or for
// the disk.
func threadUsage() (u usage, ok bool) {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	if syscall.Getrusage(rusageThread, &ru) != nil {
		return u, false
	}
	return usage{
		cpu:    time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		minflt: ru.Minflt,
		majflt: ru.Majflt,
	}, true
}
