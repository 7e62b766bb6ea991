//go:build !(linux && (amd64 || arm64))

package status

// dropCached cannot drop files from the page cache here.
func dropCached(string) bool { return false }
