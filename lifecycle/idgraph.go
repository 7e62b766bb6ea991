package lifecycle

import (
	"cmp"
	"context"
	"math/bits"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The collection's graph, on digests as int32 identifiers: at 100k
// images (400k digests) its maps keyed by digest strings (the view, the
// marks, the store's listing, the manifests read, the interner) held ~1.8
// KiB per image; a digest is now its 32 bytes in the index's table
// (storage.ContentTable) and 4 bytes wherever else it is kept.

// digestIDs numbers digests: those of the content table first, then, as
// they are met, the others (stored files without records, digests
// manifests name that have none).
type digestIDs struct {
	table  *storage.ContentTable
	extra  map[digest.Digest]int32
	extras []digest.Digest
}

func newDigestIDs(t *storage.ContentTable) *digestIDs {
	return &digestIDs{table: t, extra: map[digest.Digest]int32{}}
}

// lookup returns d's identifier, if it has one.
func (x *digestIDs) lookup(d digest.Digest) (int32, bool) {
	if i, ok := x.table.ID(d); ok {
		return int32(i), true
	}
	id, ok := x.extra[d]
	return id, ok
}

// id returns d's identifier, giving it one if it has none.
func (x *digestIDs) id(d digest.Digest) int32 {
	if id, ok := x.lookup(d); ok {
		return id
	}
	id := int32(x.table.Len() + len(x.extras))
	x.extra[d] = id
	x.extras = append(x.extras, d)
	return id
}

// lookupBytes is lookup of a digest given as bytes: no string is made
// for a canonical sha256 digest with records.
func (x *digestIDs) lookupBytes(b []byte) (int32, bool) {
	if _, ok := storage.SHA256KeyBytes(b); ok {
		if i, ok := x.table.IDBytes(b); ok {
			return int32(i), true
		}
	}
	return x.lookup(digest.Digest(b))
}

// idBytes returns the identifier of a digest given as bytes, giving it
// one if it has none; ok is false if it is not a valid digest. No string
// is made for a canonical sha256 digest with records.
func (x *digestIDs) idBytes(b []byte) (int32, bool) {
	if _, ok := storage.SHA256KeyBytes(b); ok {
		if i, ok := x.table.IDBytes(b); ok {
			return int32(i), true
		}
	}
	d := digest.Digest(b)
	if !oci.ValidDigest(d) {
		return 0, false
	}
	return x.id(d), true
}

// digest is the digest of id.
func (x *digestIDs) digest(id int32) digest.Digest {
	if int(id) < x.table.Len() {
		return x.table.Digest(int(id))
	}
	return x.extras[int(id)-x.table.Len()]
}

// compare orders identifiers as their digests' strings: the table's
// sha256 digests are in that order already, the others are compared as
// strings.
func (x *digestIDs) compare(a, b int32) int {
	if a == b {
		return 0
	}
	_, shaA := x.table.Key(int(a))
	_, shaB := x.table.Key(int(b))
	if shaA && shaB {
		return cmp.Compare(a, b)
	}
	return cmp.Compare(x.digest(a), x.digest(b))
}

// n is the number of identifiers given.
func (x *digestIDs) n() int { return x.table.Len() + len(x.extras) }

// recorded reports whether id has a manifest or blob record.
func (x *digestIDs) recorded(id int32) bool {
	return int(id) < x.table.Len() && x.table.Recorded(int(id))
}

// idSet is a set of identifiers: a bit each.
type idSet []uint64

func (s *idSet) add(id int32) {
	w := int(id) / 64
	if w >= len(*s) {
		*s = append(*s, make([]uint64, w+1-len(*s))...)
	}
	(*s)[w] |= 1 << (uint(id) % 64)
}

func (s idSet) has(id int32) bool {
	w := int(id) / 64
	return w < len(s) && s[w]&(1<<(uint(id)%64)) != 0
}

// all calls fn with every identifier in the set, in order.
func (s idSet) all(fn func(int32)) {
	for w, word := range s {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			fn(int32(w*64 + b))
			word &^= 1 << b
		}
	}
}

// idNode is a manifest read from the store (see node).
type idNode struct {
	missing          bool
	manifests, blobs []int32
}

// idGraph reads manifests from the store, each once (graph.parse), and
// walks what they reference.
type idGraph struct {
	g     *graph
	ids   *digestIDs
	nodes map[int32]*idNode
	// referrers: g.referrers by identifier.
	referrers map[int32][]int32
}

// newIDGraph numbers g's referrers; g's nodes are not used.
func newIDGraph(g *graph, ids *digestIDs) *idGraph {
	ig := &idGraph{g: g, ids: ids, nodes: map[int32]*idNode{}, referrers: make(map[int32][]int32, len(g.referrers))}
	for subject, refs := range g.referrers {
		s := ids.id(subject)
		for _, r := range refs {
			ig.referrers[s] = append(ig.referrers[s], ids.id(r))
		}
	}
	return ig
}

// load reads and parses a manifest, as graph.load does.
func (ig *idGraph) load(ctx context.Context, id int32) (*idNode, error) {
	if n, ok := ig.nodes[id]; ok {
		return n, nil
	}
	p, err := ig.g.parse(ctx, ig.ids.digest(id))
	if err != nil {
		return nil, err
	}
	n := &idNode{missing: p.missing}
	for _, d := range p.manifests {
		n.manifests = append(n.manifests, ig.ids.id(d))
	}
	for _, d := range p.blobs {
		n.blobs = append(n.blobs, ig.ids.id(d))
	}
	ig.nodes[id] = n
	return n, nil
}

// marks are what is marked: manifests walked, and blobs.
type marks struct{ manifests, blobs idSet }

func (m *marks) has(id int32) bool { return m.manifests.has(id) || m.blobs.has(id) }

// walk marks root and what it references, as graph.walk does.
func (ig *idGraph) walk(ctx context.Context, root int32, m *marks) error {
	stack := []int32{root}
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if m.manifests.has(id) {
			continue
		}
		m.manifests.add(id)
		n, err := ig.load(ctx, id)
		if err != nil {
			return err
		}
		for _, b := range n.blobs {
			m.blobs.add(b)
		}
		stack = append(stack, n.manifests...)
		stack = append(stack, ig.referrers[id]...)
	}
	return nil
}
