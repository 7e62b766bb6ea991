package storage

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// openStoredFile opens a stored file for reading without updating its
// access time (O_NOATIME), as git reads its objects. Nothing here reads
// access times (last pulls are index records), and an update dirties the
// inode for ext4's journal, which an index commit's fdatasync may then
// have to write: under relatime, the first read of every stored file and
// one a day after. A file this process does not own (a data directory
// written by another user) refuses O_NOATIME without CAP_FOWNER, and is
// opened plainly.
func openStoredFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOATIME, 0)
	if errors.Is(err, fs.ErrPermission) {
		return os.Open(path)
	}
	return f, err
}
