package storage

import (
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// threadUsage is the calling thread's CPU time, page faults and
// involuntary context switches so far (ok false if unknown): with the
// goroutine locked to its thread, what a write transaction spent on the
// CPU, as against waiting for one or for the disk.
func threadUsage() (u usage, ok bool) {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return u, false
	}
	return usage{
		cpu:    time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		sys:    time.Duration(ru.Stime.Nano()),
		minflt: int64(ru.Minflt),
		majflt: int64(ru.Majflt),
		nivcsw: int64(ru.Nivcsw),
	}, true
}

// flushFS commits the journal of the filesystem the index is on (syncfs),
// outside the write lock, before a pass's write transaction. The index's
// fdatasync in a commit makes ext4 commit its journal, and with it
// everything else the filesystem changed since: after a sweep has just
// removed 256 store directories, their removal (and, mounted with
// discard, the discards of their blocks). Measured at 100k: with the
// store's removals turned off, no write of the eviction held the lock
// over 40 ms; with them, 19–72 writes over 100 ms per eviction, nearly
// all of it in the commit's syncs. Flushed here, the commit's syncs carry
// only the index's own pages. Errors are ignored: the commit syncs anyway.
func (ix *Index) flushFS() {
	ix.fsFlushes.Add(1)
	f, err := os.Open(filepath.Dir(ix.db.Path()))
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Syncfs(int(f.Fd()))
}
