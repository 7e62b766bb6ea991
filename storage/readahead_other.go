//go:build !linux

package storage

// readAhead does nothing on this platform.
func readAhead(string) {}
