//go:build !(linux || darwin || freebsd)

package status

// DiskSpace is not measured on this system: zeros.
func DiskSpace(string) (free, total uint64) { return 0, 0 }
