//go:build linux && (amd64 || arm64)

package status

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// dropCached asks the kernel to drop the files under root from its page
// cache (POSIX_FADV_DONTNEED), as after a restart of the machine, and
// reports whether it could.
func dropCached(root string) bool {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		const dontNeed = 4 // POSIX_FADV_DONTNEED
		if _, _, errno := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, dontNeed, 0, 0); errno != 0 {
			return errno
		}
		return nil
	})
	return err == nil
}
