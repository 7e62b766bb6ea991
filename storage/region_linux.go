package storage

import "golang.org/x/sys/unix"

// reserveRegion maps n bytes of anonymous memory, resident only as far
// as they are touched, in huge pages where the kernel allows it (fewer
// TLB entries), and outside the Go heap: the garbage collector neither
// scans it nor counts it in its goal.
func reserveRegion(n int) ([]byte, error) {
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	_ = unix.Madvise(mem, unix.MADV_HUGEPAGE) // advice only
	return mem, nil
}

// freeRegion unmaps a region reserveRegion returned.
func freeRegion(mem []byte) { _ = unix.Munmap(mem) }
