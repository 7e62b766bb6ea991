package lifecycle

import (
	"bytes"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// digestSet is a set of digests an eviction hands to its collection (what
// it freed, the roots it dropped): a sha256 digest is its 32 bytes, not a
// 71-byte string and a map entry (at 100k images, 200k freed digests:
// ~6 MiB instead of ~21). Others are kept as strings. Add, then look up:
// the first lookup sorts it. The nil set is empty.
type digestSet struct {
	sha    [][32]byte
	sorted bool
	other  map[digest.Digest]bool
}

func (s *digestSet) add(d digest.Digest) {
	if k, ok := storage.SHA256Key(d); ok {
		s.sha = append(s.sha, k)
		s.sorted = false
		return
	}
	if s.other == nil {
		s.other = map[digest.Digest]bool{}
	}
	s.other[d] = true
}

// addID adds the digest numbered id (no string made for one of the
// table's sha256 digests).
func (s *digestSet) addID(ids *digestIDs, id int32) {
	if int(id) < ids.table.Len() {
		if k, ok := ids.table.Key(int(id)); ok {
			s.sha = append(s.sha, k)
			s.sorted = false
			return
		}
	}
	s.add(ids.digest(id))
}

func (s *digestSet) has(d digest.Digest) bool {
	if s == nil {
		return false
	}
	k, ok := storage.SHA256Key(d)
	if !ok {
		return s.other[d]
	}
	if !s.sorted {
		slices.SortFunc(s.sha, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
		s.sorted = true
	}
	_, found := slices.BinarySearchFunc(s.sha, k, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
	return found
}
