//go:build !linux

package storage

import "os"

// openStoredFile opens a stored file for reading (see the Linux one).
func openStoredFile(path string) (*os.File, error) { return os.Open(path) }

// readStoredFile reads a stored file into one buffer (see the Linux one).
func readStoredFile(path string, size, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size < 0 {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		size = min(fi.Size(), limit)
	}
	return ReadAtMost(f, size)
}
