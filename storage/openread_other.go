//go:build !linux

package storage

import "os"

// openStoredFile opens a stored file for reading (see the Linux one).
func openStoredFile(path string) (*os.File, error) { return os.Open(path) }

// openStoredSized opens a stored file with its size (see the Linux one).
func openStoredSized(path string) (File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

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
