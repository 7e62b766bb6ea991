package storage

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// releaseMapped drops the index's mapped pages from the process's page
// tables (madvise MADV_DONTNEED), all of them: see releaseKept for why.
// The branch pages the watcher kept are no longer known to be mapped.
func (ix *Index) releaseMapped(*bolt.Tx) {
	start := ix.db.Info().Data
	end, ok := mappingEnd(start)
	if !ok || end <= start {
		return
	}
	c := &ix.branches
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mapped = false
	ix.leaves.publish(start, nil)
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, start, end-start, syscall.MADV_DONTNEED)
}

// releaseKept drops the index's mapped pages from the process's page
// tables (madvise MADV_DONTNEED) during and after a read of every record,
// but the branch pages the watcher last kept (releaseLeaves): bbolt maps
// the whole file read-only and shared, so such a read leaves all of it
// resident (counted in RSS as RssFile: at 100k images, hundreds of MiB).
// The pages stay in the kernel's page cache; a later read of one faults
// it back in without reading the disk. Nothing is lost: bbolt never
// writes through the mapping (it writes the file), so its pages are never
// dirty. Called inside a transaction, whose read lock on the mapping
// keeps bbolt from remapping it meanwhile; other transactions reading it
// at the same time only fault their pages back in. The range is the whole
// mapping as /proc/self/maps has it (pages above the last transaction's
// end can be resident too), never more: MADV_DONTNEED on the memory after
// it would drop the Go heap's pages. With no branch pages known it drops
// everything. While the watcher releases (walking the branch pages) it
// does nothing and returns false, unless wait, when it waits for that
// release to end (the walk never waits for a transaction: it reads in a
// transaction of its own, begun before it locked the branch cache).
// Errors are ignored: this only returns memory.
func (ix *Index) releaseKept(tx *bolt.Tx, wait bool) bool {
	c := &ix.branches
	if wait {
		c.mu.Lock()
	} else if !c.mu.TryLock() {
		return false
	}
	runs := c.runs
	if c.base != ix.db.Info().Data {
		runs = nil // the file was remapped since: nothing is mapped
	}
	c.mu.Unlock()
	if runs == nil {
		ix.releaseMapped(tx)
		return true
	}
	start := ix.db.Info().Data
	end, ok := mappingEnd(start)
	if !ok || end <= start {
		return true
	}
	// Without the lock: a walk meanwhile only makes the kept runs stale,
	// and keeping or dropping the wrong pages is safe.
	dropRanges(gaps(start, start, end, uintptr(ix.db.Info().PageSize), runs))
	return true
}

// adviseMapping marks the index's mapping [start, start+n) MADV_NOHUGEPAGE:
// the page cache holds the file in large folios (up to 2 MiB where it
// was written in large writes), and a fault on a PMD-sized one would map
// all of it with one PMD entry, which a later drop of part of it
// (releaseLeaves' gaps) would unmap whole, the branch pages it is meant
// to keep included. Marked so, faults map folios page by page, and drops
// are exact. Errors are ignored.
func adviseMapping(start, n uintptr) {
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, start, n, unix.MADV_NOHUGEPAGE)
}

// adviseMapped applies adviseMapping to the index's mapping as it is now
// (at open, before the first read).
func (ix *Index) adviseMapped() {
	start := ix.db.Info().Data
	if end, ok := mappingEnd(start); ok && end > start {
		adviseMapping(start, end-start)
	}
}

// populateBatch is how many pages populate maps before it drops what
// their faults mapped around them: a fault maps up to a large folio
// (~128 KiB measured at 100k images), so at most ~16 MiB at a time.
const populateBatch = 128

// releaseLeaves is releaseKept, but keeps the pages lookups read on
// their way to a leaf mapped (branchRuns), walking them if a write has
// committed since the last walk, and mapping those not mapped yet: it
// drops the gaps between them. It returns the pages it kept. c keeps the
// runs of the last snapshot it walked, reused while no write has
// committed since.
func (ix *Index) releaseLeaves(tx *bolt.Tx, c *branchCache) (kept int) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	if c.base != start {
		c.mapped = false // remapped: nothing of the old mapping is mapped
		adviseMapping(start, end-start)
	}
	if c.txid != tx.ID() || c.runs == nil || !c.mapped {
		var known []pageRun
		if c.mapped {
			known = c.runs
		}
		var f *os.File
		opened := false
		w := branchWalk{data: data, known: known, pageSize: uint64(ps), file: func() io.ReaderAt {
			if !opened {
				opened = true
				if g, err := os.Open(ix.db.Path()); err == nil {
					f = g
				}
			}
			if f == nil {
				return nil
			}
			return f
		}}
		runs := branchRuns(tx, &w, hotBuckets)
		if f != nil {
			f.Close()
		}
		c.fileReads += w.fileReads
		c.mappedReads += w.mappedReads
		c.touched += populate(data, start, ps, runs, known, populateBatch, nil)
		c.txid, c.runs, c.base, c.mapped = tx.ID(), runs, start, true
		ix.leaves.publish(start, runs)
	}
	for _, r := range c.runs {
		kept += int(r.n)
	}
	dropRanges(gaps(start, start, end, ps, c.runs))
	return kept
}

// populate maps the pages of runs that known does not name by reading a
// byte of each through the mapping data (at start), batch pages at a
// time, dropping what each batch's faults mapped around them (the gaps
// between runs, from the end of the last batch to the end of this one)
// before the next, then calling after (if not nil: tests). The last
// batch's gaps are left to the caller. It returns the sum of the bytes
// read, so that the reads are not optimised away.
func populate(data []byte, start, ps uintptr, runs, known []pageRun, batch int, after func()) (sum int) {
	from, touched := start, 0
	for i, r := range runs {
		if !contains(known, r.first, r.n) {
			for id := r.first; id < r.first+r.n; id++ {
				sum += int(data[uintptr(id)*ps])
			}
			touched += int(r.n)
		}
		if touched >= batch && i < len(runs)-1 {
			to := start + uintptr(r.first+r.n)*ps
			dropRanges(gaps(start, from, to, ps, runs[:i+1]))
			from, touched = to, 0
			if after != nil {
				after()
			}
		}
	}
	return sum
}

// gaps returns the ranges of [from, to) between runs (pages of the
// mapping at base, page size ps).
func gaps(base, from, to, ps uintptr, runs []pageRun) []syscall.Iovec {
	var out []syscall.Iovec
	add := func(lo, hi uintptr) {
		lo, hi = max(lo, from), min(hi, to)
		if hi > lo {
			iov := syscall.Iovec{Base: (*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&lo)))}
			iov.SetLen(int(hi - lo))
			out = append(out, iov)
		}
	}
	at := from
	for _, r := range runs {
		lo, hi := base+uintptr(r.first)*ps, base+uintptr(r.first+r.n)*ps
		add(at, lo)
		at = max(at, hi)
	}
	add(at, to)
	return out
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
// memory: the third field of /proc/self/statm, in pages. It opens the
// file each time; an Index keeps it open (statm).
func residentFileBytes() (int64, bool) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	return statmFileBytes(raw)
}

// statmFileBytes reads the resident file-backed memory from the contents
// of /proc/self/statm.
func statmFileBytes(raw []byte) (int64, bool) {
	f := bytes.Fields(raw)
	if len(f) < 3 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(f[2]), 10, 64)
	return n * int64(os.Getpagesize()), err == nil
}

// statm is /proc/self/statm kept open. The watcher looks at RssFile
// every 10 ms, full reads every 128 KiB of records, a pass's write
// transactions every 16 lookups: opening and reading the file anew
// (os.ReadFile: eight system calls) took 20–22 µs a look on this
// project's 2-core machine (~36 µs loaded), a pread of the open file 2.5
// µs (BenchmarkStatm). And each system call inside a write transaction is
// a chance for its goroutine to lose its P and wait for one, the write
// lock held. The kernel makes the contents anew for a read at offset 0.
type statm struct{ fd int }

// openStatm opens /proc/self/statm; nil if it cannot.
func openStatm() *statm {
	fd, err := unix.Open("/proc/self/statm", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return &statm{fd: fd}
}

// rssFile is the process's resident file-backed memory (residentFileBytes);
// a nil statm (the file could not be opened) does not know it.
func (s *statm) rssFile() (int64, bool) {
	if s == nil {
		return 0, false
	}
	var buf [128]byte
	n, err := unix.Pread(s.fd, buf[:], 0)
	if err != nil {
		return 0, false
	}
	return statmFileBytes(buf[:n])
}

// close closes the file (a nil statm has none).
func (s *statm) close() error {
	if s == nil {
		return nil
	}
	return unix.Close(s.fd)
}
