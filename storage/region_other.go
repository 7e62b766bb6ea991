//go:build !linux

package storage

// reserveRegion returns n bytes of memory (a leaf reader, which alone
// asks for one, runs on Linux only).
func reserveRegion(n int) ([]byte, error) { return make([]byte, n), nil }

// freeRegion leaves the memory to the garbage collector.
func freeRegion([]byte) {}
