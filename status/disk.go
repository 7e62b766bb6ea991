//go:build linux || darwin || freebsd

package status

import (
	"os"
	"syscall"
)

// DiskSpace returns the bytes the mirror may still write (what is free
// for unprivileged users; as root, the blocks reserved for root too) and
// the total bytes of the file system holding dir; zeros if it cannot
// tell.
func DiskSpace(dir string) (free, total uint64) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0
	}
	avail := uint64(st.Bavail)
	if os.Geteuid() == 0 {
		avail = uint64(st.Bfree)
	}
	return avail * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize)
}
