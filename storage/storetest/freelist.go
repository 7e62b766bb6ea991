package storetest

import (
	"encoding/binary"
	"fmt"
	"os"
)

// FreelistWritten reports whether the last commit of the bbolt file at
// path wrote bbolt's freelist, as its meta page says: storage.Index
// leaves it out while a pass runs (Index.BeginPass).
//
// bbolt's on-disk layout (go.etcd.io/bbolt, internal/common): two meta
// pages at the file's start, each a 16-byte page header then magic,
// version, page size and flags (4 bytes each), the root bucket (16), the
// freelist's page id (8), the high-water page id (8) and the transaction
// id (8), little-endian on the platforms this runs on; the meta with the
// higher transaction id is the last commit's, and a freelist id of all
// ones says it has none.
func FreelistWritten(path string) (bool, error) {
	f, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	const (
		header    = 16
		sizeAt    = header + 8
		freeAt    = header + 32
		txidAt    = header + 48
		noFreeID  = ^uint64(0)
		magicWord = 0xED0CDAED
	)
	le := binary.LittleEndian
	if len(f) < header+64 || le.Uint32(f[header:]) != magicWord {
		return false, fmt.Errorf("%s: not a bbolt file", path)
	}
	size := int(le.Uint32(f[sizeAt:]))
	if len(f) < size+header+64 || le.Uint32(f[size+header:]) != magicWord {
		return false, fmt.Errorf("%s: no second meta page at %d", path, size)
	}
	last := 0
	if le.Uint64(f[size+txidAt:]) > le.Uint64(f[txidAt:]) {
		last = size
	}
	return le.Uint64(f[last+freeAt:]) != noFreeID, nil
}
