package lifecycle

import (
	"bytes"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// digestSet is a set of digests an eviction hands to its collection (what
// it freed, the roots it dropped): a digest of the model's content table
// is a bit (at 100k images, 200k freed digests: 50 KiB, where their 32
// bytes were ~6 MiB and their strings in a map ~21), another sha256
// digest its 32 bytes, others strings. Add, then look up: the first
// lookup sorts it. The nil set is empty.
type digestSet struct {
	// table and inTable: the digests added by their identifiers in
	// table (addID).
	table   *storage.ContentTable
	inTable idSet
	sha     [][32]byte
	sorted  bool
	other   map[digest.Digest]bool
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
	if int(id) < ids.table.Len() && (s.table == nil || s.table == ids.table) {
		s.table = ids.table
		s.inTable.add(id)
		return
	}
	s.add(ids.digest(id))
}

// hasID reports whether the digest numbered id in ids is in the set.
func (s *digestSet) hasID(ids *digestIDs, id int32) bool {
	if s == nil {
		return false
	}
	if s.table == ids.table && s.inTable.has(id) {
		return true
	}
	if s.table == ids.table && len(s.sha) == 0 && len(s.other) == 0 {
		return false // nothing added as a digest: no string made
	}
	return s.has(ids.digest(id))
}

func (s *digestSet) has(d digest.Digest) bool {
	if s == nil {
		return false
	}
	if s.table != nil {
		if id, ok := s.table.ID(d); ok && s.inTable.has(int32(id)) {
			return true
		}
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
