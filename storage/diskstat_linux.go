package storage

import (
	"bytes"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// diskStat is the I/O counters of the block device the index is on
// (/sys/dev/block/MAJ:MIN/stat), kept open as statm is: a slow write's
// log says what the disk did while the write held the lock, which tells
// a disk busy with other work (reads, writes, discards queued before the
// commit's flush) from a sync that was slow on its own.
type diskStat struct{ fd int }

// openDiskStat opens the counters of the device holding path; nil if it
// has none (a filesystem without a block device, as tmpfs or overlay).
func openDiskStat(path string) *diskStat {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return nil
	}
	name := fmt.Sprintf("/sys/dev/block/%d:%d/stat", unix.Major(st.Dev), unix.Minor(st.Dev))
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return &diskStat{fd: fd}
}

// read returns the counters now (ok false if unknown). The kernel makes
// the contents anew for a read at offset 0.
func (d *diskStat) read() diskIO {
	if d == nil {
		return diskIO{}
	}
	var buf [256]byte
	n, err := unix.Pread(d.fd, buf[:], 0)
	if err != nil {
		return diskIO{}
	}
	return parseDiskStat(buf[:n])
}

// close closes the file (a nil diskStat has none).
func (d *diskStat) close() error {
	if d == nil {
		return nil
	}
	return unix.Close(d.fd)
}

// parseDiskStat reads a block device's stat line (Documentation/block/
// stat.rst): reads completed first, writes completed fifth, requests in
// flight ninth, discards completed twelfth, flushes completed sixteenth.
// Kernels before 4.18 have no discards, before 5.5 no flushes: zero.
func parseDiskStat(line []byte) diskIO {
	f := bytes.Fields(line)
	if len(f) < 11 {
		return diskIO{}
	}
	field := func(i int) uint64 {
		if i >= len(f) {
			return 0
		}
		n, _ := strconv.ParseUint(string(f[i]), 10, 64)
		return n
	}
	return diskIO{reads: field(0), writes: field(4), inFlight: field(8), discards: field(11), flushes: field(15), ok: true}
}
