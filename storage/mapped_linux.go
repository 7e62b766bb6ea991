package storage

import (
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// releaseMapped drops the index's mapped pages from the process's page
// tables (madvise MADV_DONTNEED) after a read of every record: bbolt maps
// the whole file read-only and shared, so such a read leaves all of it
// resident (counted in RSS as RssFile: at 100k images, hundreds of MiB).
// The pages stay in the kernel's page cache; a later read of one faults
// it back in without reading the disk. Nothing is lost: bbolt never
// writes through the mapping (it writes the file), so its pages are never
// dirty. Called inside a transaction, whose read lock on the mapping
// keeps bbolt from remapping it meanwhile; other transactions reading it
// at the same time only fault their pages back in. Errors are ignored:
// this only returns memory.
func (ix *Index) releaseMapped(tx *bolt.Tx) {
	size := tx.Size()
	if size <= 0 {
		return
	}
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, ix.db.Info().Data, uintptr(size), syscall.MADV_DONTNEED)
}
