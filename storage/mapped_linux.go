package storage

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// releaseMapped drops the index's mapped pages from the process's page
// tables (madvise MADV_DONTNEED) during and after a read of every record:
// bbolt maps the whole file read-only and shared, so such a read leaves
// all of it resident (counted in RSS as RssFile: at 100k images, hundreds
// of MiB). The pages stay in the kernel's page cache; a later read of one
// faults it back in without reading the disk. Nothing is lost: bbolt
// never writes through the mapping (it writes the file), so its pages are
// never dirty. Called inside a transaction, whose read lock on the mapping
// keeps bbolt from remapping it meanwhile; other transactions reading it
// at the same time only fault their pages back in. The range is the whole
// mapping as /proc/self/maps has it (pages above the last transaction's
// end can be resident too), never more: MADV_DONTNEED on the memory after
// it would drop the Go heap's pages. Errors are ignored: this only returns
// memory.
func (ix *Index) releaseMapped(*bolt.Tx) {
	start := ix.db.Info().Data
	end, ok := mappingEnd(start)
	if !ok || end <= start {
		return
	}
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, start, end-start, syscall.MADV_DONTNEED)
}

// mappingEnd returns the end of the mapping that starts at start, from
// /proc/self/maps ("start-end perms offset dev inode path", in hex).
func mappingEnd(start uintptr) (uintptr, bool) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	want := []byte(strconv.FormatUint(uint64(start), 16) + "-")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), want)
		if !ok {
			continue
		}
		end, _, _ := bytes.Cut(rest, []byte{' '})
		n, err := strconv.ParseUint(string(end), 16, 64)
		return uintptr(n), err == nil
	}
	return 0, false
}

// residentFileBytes is the process's resident file-backed (and shared)
// memory: the third field of /proc/self/statm, in pages.
func residentFileBytes() (int64, bool) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := bytes.Fields(raw)
	if len(f) < 3 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(f[2]), 10, 64)
	return n * int64(os.Getpagesize()), err == nil
}
