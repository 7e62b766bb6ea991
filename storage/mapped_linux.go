package storage

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
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

// releaseLeaves is releaseMapped, but keeps the pages lookups read on
// their way to a leaf mapped (branchRuns): it drops the gaps between
// them. It returns the pages it kept. c keeps the runs of the last
// snapshot it walked, reused while no write has committed since.
func (ix *Index) releaseLeaves(tx *bolt.Tx, c *branchCache) (kept int) {
	info := ix.db.Info()
	start := info.Data
	end, ok := mappingEnd(start)
	if !ok || end <= start || uintptr(tx.Size()) > end-start {
		return 0
	}
	// The mapping as bytes: memory outside the Go heap, read only here,
	// inside the transaction that keeps bbolt from remapping it.
	data := unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&start))), tx.Size())
	ps := uintptr(info.PageSize)
	var gaps []syscall.Iovec
	gap := func(from, to uintptr) {
		if to > from {
			iov := syscall.Iovec{Base: (*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&from)))}
			iov.SetLen(int(to - from))
			gaps = append(gaps, iov)
		}
	}
	from := start
	if c.txid != tx.ID() || c.runs == nil {
		c.txid, c.runs = tx.ID(), branchRuns(tx, data, info.PageSize, hotBuckets)
	}
	for _, r := range c.runs {
		gap(from, start+uintptr(r.first)*ps)
		from = start + uintptr(r.first+r.n)*ps
		kept += int(r.n)
	}
	gap(from, end)
	dropRanges(gaps)
	return kept
}

// iovMax is how many ranges one process_madvise takes (UIO_MAXIOV).
const iovMax = 1024

// dropRanges drops the mapped pages of each range (MADV_DONTNEED): up to
// iovMax ranges a call with process_madvise on this process (Linux 6.13
// and later take MADV_DONTNEED there), one madvise a range where that
// fails. The index's branch pages leave ~3,000 gaps at 100k images: one
// madvise each costs ~2 µs.
func dropRanges(rs []syscall.Iovec) {
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err == nil {
		defer unix.Close(pidfd)
	}
	for len(rs) > 0 {
		batch := rs[:min(len(rs), iovMax)]
		rs = rs[len(batch):]
		var want uint64
		for _, r := range batch {
			want += uint64(r.Len)
		}
		if err == nil {
			n, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&batch[0])), uintptr(len(batch)), unix.MADV_DONTNEED, 0, 0)
			if errno == 0 && uint64(n) == want {
				continue
			}
		}
		for _, r := range batch {
			_ = unix.Madvise(unsafe.Slice(r.Base, r.Len), unix.MADV_DONTNEED)
		}
	}
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
