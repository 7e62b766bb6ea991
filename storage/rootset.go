package storage

import (
	"math/bits"

	"github.com/opencontainers/go-digest"
)

// RootSet is a set of root digests (Roots). Those with records in its
// content table are a bit each, by their identifiers in the table; the
// others (a tag or a pin naming content not recorded) are strings. A
// nil set is empty.
type RootSet struct {
	table *ContentTable
	// inTable has bit id set for the table's identifier id.
	inTable []uint64
	other   map[digest.Digest]struct{}
	n       int
}

// newRootSet is an empty set on t (which may be nil: every digest is
// then a string).
func newRootSet(t *ContentTable) *RootSet {
	s := &RootSet{table: t}
	if t != nil {
		s.inTable = make([]uint64, (t.Len()+63)/64)
	}
	return s
}

// addBytes adds the digest d (its bytes are not kept).
func (s *RootSet) addBytes(d []byte) {
	if s.table != nil {
		if id, ok := s.table.IDBytes(d); ok {
			w, b := id/64, uint(id)%64
			if s.inTable[w]&(1<<b) == 0 {
				s.inTable[w] |= 1 << b
				s.n++
			}
			return
		}
	}
	if _, ok := s.other[digest.Digest(d)]; ok {
		return
	}
	if s.other == nil {
		s.other = map[digest.Digest]struct{}{}
	}
	s.other[digest.Digest(d)] = struct{}{}
	s.n++
}

// Table is the content table the set's identifiers are of (nil if
// none).
func (s *RootSet) Table() *ContentTable {
	if s == nil {
		return nil
	}
	return s.table
}

// Len is the number of roots.
func (s *RootSet) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Has reports whether d is in the set.
func (s *RootSet) Has(d digest.Digest) bool {
	if s == nil {
		return false
	}
	if s.table != nil {
		if id, ok := s.table.ID(d); ok {
			return s.HasID(id)
		}
	}
	_, ok := s.other[d]
	return ok
}

// HasID reports whether the digest of identifier id in the set's table
// is in the set.
func (s *RootSet) HasID(id int) bool {
	if s == nil || id < 0 || id/64 >= len(s.inTable) {
		return false
	}
	return s.inTable[id/64]&(1<<(uint(id)%64)) != 0
}

// EachID calls fn with the identifier in the set's table of every root
// that has one, in order.
func (s *RootSet) EachID(fn func(id int)) {
	if s == nil {
		return
	}
	for w, word := range s.inTable {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			fn(w*64 + b)
			word &^= 1 << b
		}
	}
}

// EachOther calls fn with every root not in the set's table, in no
// particular order.
func (s *RootSet) EachOther(fn func(d digest.Digest)) {
	if s == nil {
		return
	}
	for d := range s.other {
		fn(d)
	}
}

// Each calls fn with every root's digest (a new string for each one in
// the table).
func (s *RootSet) Each(fn func(d digest.Digest)) {
	s.EachID(func(id int) { fn(s.table.Digest(id)) })
	s.EachOther(fn)
}
