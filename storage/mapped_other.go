//go:build !linux

package storage

import bolt "go.etcd.io/bbolt"

// releaseMapped is a no-op where madvise(MADV_DONTNEED) is not used (see
// mapped_linux.go).
func (ix *Index) releaseMapped(*bolt.Tx) {}

// releaseKept is releaseMapped; it never finds the branch cache busy.
func (ix *Index) releaseKept(*bolt.Tx, bool) bool { return true }

// releaseLeaves is releaseMapped.
func (ix *Index) releaseLeaves(*bolt.Tx, *branchCache) int { return 0 }

// residentFileBytes is not known here: no watcher runs.
func residentFileBytes() (int64, bool) { return 0, false }

// statm tells nothing here (see mapped_linux.go).
type statm struct{}

func openStatm() *statm               { return nil }
func (*statm) rssFile() (int64, bool) { return 0, false }
func (*statm) close() error           { return nil }

// adviseMapped does nothing here (see mapped_linux.go).
func (ix *Index) adviseMapped() {}
