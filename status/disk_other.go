//go:build !(linux || darwin || freebsd)

package status

// diskSpace is not measured on this system.
func diskSpace(string) (free, total uint64) { return 0, 0 }
