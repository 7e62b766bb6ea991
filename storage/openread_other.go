//go:build !linux

package storage

import "os"

// openStoredFile opens a stored file for reading (see the Linux one).
func openStoredFile(path string) (*os.File, error) { return os.Open(path) }
