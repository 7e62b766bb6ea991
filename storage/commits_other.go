//go:build !linux

package storage

// threadUsage is unknown on this platform.
func threadUsage() (usage, bool) { return usage{}, false }

// flushFS only counts: the commit's syncs are what this platform has.
func (ix *Index) flushFS() { ix.fsFlushes.Add(1) }
