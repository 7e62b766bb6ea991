package storage

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// openStoredFile opens a stored file for reading without updating its
// access time (O_NOATIME). Nothing here reads access times (last pulls
// are index records), and each update dirties the inode: under relatime
// the first read after a write or a day, so at 100k images the status
// list's read of every manifest left ~100k inodes for ext4's journal,
// which the index's next commit (its fdatasync) then wrote: a 3-page
// write held the write lock 100–107 ms in 4 of 19 runs of
// BenchmarkScale. A file this process does not own (a data directory
// written by another user) refuses O_NOATIME without CAP_FOWNER, and is
// opened plainly.
func openStoredFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOATIME, 0)
	if errors.Is(err, fs.ErrPermission) {
		return os.Open(path)
	}
	return f, err
}
