//go:build linux || darwin || freebsd

package status

import "syscall"

// diskSpace returns the free (for unprivileged users) and total bytes of
// the file system holding dir; zeros if it cannot tell.
func diskSpace(dir string) (free, total uint64) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0
	}
	return uint64(st.Bavail) * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize)
}
