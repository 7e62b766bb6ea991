//go:build !linux

package storage

// threadUsage is unknown on this platform.
func threadUsage() (usage, bool) { return usage{}, false }
