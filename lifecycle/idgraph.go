package lifecycle

import (
	"cmp"
	"context"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

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
// manifests name that have none). It is safe for concurrent use (the
// model's manifests are read while the index is: Collector.model); the
// table's digests, nearly all, are numbered without a lock.
type digestIDs struct {
	table  *storage.ContentTable
	mu     sync.Mutex
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
	x.mu.Lock()
	defer x.mu.Unlock()
	id, ok := x.extra[d]
	return id, ok
}

// id returns d's identifier, giving it one if it has none.
func (x *digestIDs) id(d digest.Digest) int32 {
	if i, ok := x.table.ID(d); ok {
		return int32(i)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if id, ok := x.extra[d]; ok {
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
	x.mu.Lock()
	defer x.mu.Unlock()
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
func (x *digestIDs) n() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.table.Len() + len(x.extras)
}

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
	missing, corrupt bool
	manifests, blobs []int32
	// detail: in a graph with details only (idGraph.details), if the
	// node has any (a collection's nodes, 100k+, keep a pointer only).
	detail *nodeDetail
}

// nodeDetail is node.platforms (each child once) and node.config (its
// identifier plus one; 0 if none or not kept).
type nodeDetail struct {
	platforms []childPlatform
	config    int32
}

// platforms are an index's children's platforms (none without details).
func (n *idNode) platforms() []childPlatform {
	if n.detail == nil {
		return nil
	}
	return n.detail.platforms
}

// config is the config's identifier plus one (0: none, or not kept).
func (n *idNode) config() int32 {
	if n.detail == nil {
		return 0
	}
	return n.detail.config
}

// platformsWithin is the platforms of an index's children and, for a
// child that is an index itself (image-spec lets an index list indexes;
// the fill copies them, see proxy's MaxIndexDepth), of its children:
// such an index's own entries name no platform. The nodes must be loaded
// (loadAll); a child not read adds nothing.
func (ig *idGraph) platformsWithin(root *idNode) []childPlatform {
	out := slices.Clip(root.platforms()) // an append copies: the node's stay as read
	seen := idSet{}
	var add func(n *idNode)
	add = func(n *idNode) {
		for _, c := range n.manifests {
			child := ig.nodes[c]
			if seen.has(c) || child == nil || len(child.manifests) == 0 {
				continue // an image, or not read
			}
			seen.add(c)
			out = append(out, child.platforms()...)
			add(child)
		}
	}
	add(root)
	return out
}

// childPlatform is an index's child and its platform.
type childPlatform struct {
	id       int32
	platform string
}

// idGraph reads manifests from the store, each once (graph.parse), and
// walks what they reference.
type idGraph struct {
	g     *graph
	ids   *digestIDs
	nodes map[int32]*idNode
	// referrers: g.referrers by identifier.
	referrers map[int32][]int32
	// details: the nodes keep an index's children's platforms (interned
	// in platforms) and, if keepConfig, the config (what the image model
	// shows; a collection does not).
	details, keepConfig bool
	// unreadable lists the manifests load found missing or corrupt, as
	// it read them (marker.keepUnreadable); a manifest read again is
	// listed again.
	unreadable []int32
	// mu guards platforms, and nodes while loadAhead runs.
	mu        sync.Mutex
	platforms storage.Interner
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
	n := ig.number(p)
	ig.nodes[id] = n
	if n.missing || n.corrupt {
		ig.unreadable = append(ig.unreadable, id)
	}
	return n, nil
}

// number is the node read as p, its digests numbered.
func (ig *idGraph) number(p *node) *idNode {
	n := &idNode{missing: p.missing, corrupt: p.corrupt}
	if len(p.manifests) > 0 {
		n.manifests = make([]int32, len(p.manifests))
		for i, d := range p.manifests {
			n.manifests[i] = ig.ids.id(d)
		}
	}
	if len(p.blobs) > 0 {
		n.blobs = make([]int32, len(p.blobs))
		for i, d := range p.blobs {
			n.blobs[i] = ig.ids.id(d)
		}
	}
	if !ig.details {
		return n
	}
	var d nodeDetail
	if len(p.platforms) > 0 {
		d.platforms = make([]childPlatform, 0, len(p.platforms))
		ig.mu.Lock()
		for dg, pl := range p.platforms {
			d.platforms = append(d.platforms, childPlatform{id: ig.ids.id(dg), platform: ig.platforms.String(pl)})
		}
		ig.mu.Unlock()
	}
	if ig.keepConfig && p.config != "" {
		d.config = ig.ids.id(p.config) + 1
	}
	if d.platforms != nil || d.config != 0 {
		n.detail = &d
	}
	return n
}

// loadAll loads every manifest a walk from roots would reach (children
// of indexes and referrers), one level at a time, parallelReads at once,
// so that the walks then find them loaded: one read after another,
// 10,000 images wait 10,000 times on the store. Each node is numbered as
// soon as it is read, its strings not waiting for the whole level. It
// fails as load does, on a store failure.
func (ig *idGraph) loadAll(ctx context.Context, roots []int32) error {
	var seen idSet
	var level []int32
	var add func(ids []int32)
	add = func(ids []int32) {
		for _, id := range ids {
			if seen.has(id) {
				continue
			}
			seen.add(id)
			if n, loaded := ig.nodes[id]; loaded { // by loadAhead: what it reaches may not be
				add(n.manifests)
				add(ig.referrers[id])
				continue
			}
			level = append(level, id)
		}
	}
	add(roots)
	for len(level) > 0 {
		nodes := make([]*idNode, len(level))
		if err := eachParallel(ctx, len(level), func(ctx context.Context, i int) error {
			p, err := ig.g.parse(ctx, ig.ids.digest(level[i]))
			if err != nil {
				return err
			}
			nodes[i] = ig.number(p)
			return nil
		}); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		done := level
		level = nil
		for i, id := range done {
			ig.nodes[id] = nodes[i]
		}
		for i, id := range done {
			add(nodes[i].manifests)
			add(ig.referrers[id])
		}
	}
	return nil
}

// loadAhead starts loading, parallelReads at once, the manifests given to
// ahead and the children of the indexes among them, while its caller goes
// on: the image model gives it the roots as it reads them from the index
// (one goroutine, ~40% of a listing's time at 100k images), so that
// loadAll then finds them loaded. ahead never waits for the reads: the
// index's read transaction must not stay open while a slow store answers
// (a writer meanwhile cannot reuse the pages it frees). done stops it and
// waits for its reads; ahead must not be called afterwards. A read that
// fails is left for loadAll to fail on; ig.nodes must not be used until
// done returns. done may be called again.
func (ig *idGraph) loadAhead(ctx context.Context) (ahead func(id int32), done func()) {
	var q idQueue
	q.ready.L = &q.mu
	var claimed idSet // under ig.mu
	claim := func(id int32) bool {
		ig.mu.Lock()
		defer ig.mu.Unlock()
		first := !claimed.has(id)
		claimed.add(id)
		return first
	}
	var load func(id int32)
	load = func(id int32) {
		if !claim(id) || ctx.Err() != nil {
			return
		}
		p, err := ig.g.parse(ctx, ig.ids.digest(id))
		if err != nil {
			return
		}
		n := ig.number(p)
		ig.mu.Lock()
		ig.nodes[id] = n
		ig.mu.Unlock()
		for _, c := range n.manifests {
			load(c)
		}
	}
	var wg sync.WaitGroup
	for range parallelReads {
		wg.Go(func() {
			for id, ok := q.next(); ok; id, ok = q.next() {
				load(id)
			}
		})
	}
	var sent idSet // a root's tags come one after another: sent once
	return func(id int32) {
			if !sent.has(id) {
				sent.add(id)
				q.push(id)
			}
		}, sync.OnceFunc(func() {
			q.close()
			wg.Wait()
		})
}

// idQueue is a queue of identifiers without a bound (4 bytes each), so
// that pushing never waits; its ready.L must be &mu.
type idQueue struct {
	mu     sync.Mutex
	ready  sync.Cond
	ids    []int32
	closed bool
}

func (q *idQueue) push(id int32) {
	q.mu.Lock()
	q.ids = append(q.ids, id)
	q.mu.Unlock()
	q.ready.Signal()
}

// next waits for an identifier; ok is false once the queue is closed
// and empty.
func (q *idQueue) next() (id int32, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.ids) == 0 && !q.closed {
		q.ready.Wait()
	}
	if len(q.ids) == 0 {
		return 0, false
	}
	id, q.ids = q.ids[0], q.ids[1:]
	return id, true
}

func (q *idQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.ready.Broadcast()
}

// reachIDs is what root keeps (graph.reach): its manifests, sorted, and
// their blobs that are not manifests, sorted, appended to manifests
// (empty) and blobs.
func (ig *idGraph) reachIDs(ctx context.Context, root int32, manifests, blobs []int32) ([]int32, []int32, error) {
	start := len(manifests)
	stack := []int32{root}
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return manifests, blobs, err
		}
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if slices.Contains(manifests[start:], id) { // a few manifests an image
			continue
		}
		n, err := ig.load(ctx, id)
		if err != nil {
			return manifests, blobs, err
		}
		manifests = append(manifests, id)
		blobs = append(blobs, n.blobs...)
		stack = append(stack, n.manifests...)
		stack = append(stack, ig.referrers[id]...)
	}
	slices.Sort(manifests)
	slices.Sort(blobs)
	blobs = slices.Compact(blobs)
	// A manifest is counted once.
	blobs = slices.DeleteFunc(blobs, func(b int32) bool {
		_, ok := slices.BinarySearch(manifests, b)
		return ok
	})
	return manifests, blobs, nil
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

// parallelReads bounds the files loadAll and readConfigPlatforms read at
// once: enough to keep a disk's queue or an object store's connections
// busy, few enough not to crowd out the requests the mirror is serving.
const parallelReads = 16

// eachParallel calls fn for 0..n-1 from up to parallelReads long-lived
// goroutines (not one per call: each would grow its stack anew to decode
// one file), and returns the first error, which cancels the ctx the
// others are given.
func eachParallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	eg, ectx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range min(parallelReads, n) {
		eg.Go(func() error {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := fn(ectx, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return eg.Wait()
}
