package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// node is a manifest read from the store.
type node struct {
	// missing: not in the store; corrupt: its bytes do not match its
	// digest. Neither has references.
	missing, corrupt bool
	manifests        []digest.Digest // children of an index
	blobs            []digest.Digest // config and layers
	// blobIDs are blobs numbered, in a graph with ids (blobs then nil).
	blobIDs []int32
	// platforms of an index's children, by digest (attestations and
	// entries without a platform left out).
	platforms map[digest.Digest]string
	config    digest.Digest
}

// graph reads manifests from the store, each once, and walks what they
// reference.
type graph struct {
	store *storage.DriverStore
	nodes map[digest.Digest]*node
	// referrers are the artifacts kept with a manifest, by its digest:
	// what its recorded referrers lists name, and its referrers tag
	// schema and cosign tags (sha256-<hex>, sha256-<hex>.sig...).
	referrers map[digest.Digest][]digest.Digest
	// intern, if not nil, gives the digests of the manifests loaded (and
	// their keys in nodes) one shared copy each.
	intern *storage.Interner
	// ids, if not nil, number the blobs of the manifests loaded
	// (node.blobIDs): the image model keeps no string per blob. The
	// configs are dropped too unless keepConfig.
	ids        *digestIDs
	keepConfig bool
}

// referrersGraph is a graph that walks from a manifest to its
// signatures, attestations and SBOMs too (see graph.referrers), as the
// index records them: they are part of its image. The referrers and
// cosign tags are to be added as the tags are read (addReferrerTag, or the model).
func (c *Collector) referrersGraph() (*graph, error) {
	g := newGraph(c.store)
	listed, err := c.index.ReferrerDigests()
	if err != nil {
		return nil, err
	}
	g.referrers = listed
	return g, nil
}

// referrerTagSubject returns the subject a tag of the referrers tag
// schema ("sha256-<hex>") or of cosign's ("sha256-<hex>.sig", ".att",
// ".sbom") names.
func referrerTagSubject(tag string) (digest.Digest, bool) {
	base, suffix, _ := strings.Cut(tag, ".")
	switch suffix {
	case "", "sig", "att", "sbom":
	default:
		return "", false
	}
	alg, hex, ok := strings.Cut(base, "-")
	if !ok {
		return "", false
	}
	d := digest.Digest(alg + ":" + hex)
	return d, oci.ValidDigest(d)
}

func newGraph(store *storage.DriverStore) *graph {
	return &graph{store: store, nodes: map[digest.Digest]*node{}}
}

// load reads and parses a manifest. Missing, corrupt or unparsable
// manifests are nodes without references; only a store failure is an
// error (nothing must be collected on partial knowledge).
func (g *graph) load(ctx context.Context, d digest.Digest) (*node, error) {
	if n, ok := g.nodes[d]; ok {
		return n, nil
	}
	n, err := g.parse(ctx, d)
	if err != nil {
		return nil, err
	}
	d = g.keep(d, n)
	g.nodes[d] = n
	return n, nil
}

// keep numbers and interns what a node just read refers to, as the
// graph is set to; it returns d interned.
func (g *graph) keep(d digest.Digest, n *node) digest.Digest {
	if g.ids != nil {
		n.blobIDs = make([]int32, len(n.blobs))
		for i, b := range n.blobs {
			n.blobIDs[i] = g.ids.id(b)
		}
		n.blobs = nil
		if !g.keepConfig {
			n.config = ""
		}
	}
	if g.intern != nil {
		n.internWith(g.intern)
		d = g.intern.Digest(d)
	}
	return d
}

// parse reads and parses a manifest, as load does, without keeping it:
// safe to call from several goroutines.
func (g *graph) parse(ctx context.Context, d digest.Digest) (*node, error) {
	n := &node{}
	body, err := g.read(ctx, d)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		n.missing = true
	case err != nil:
		return nil, fmt.Errorf("reading manifest %s: %w", d, err)
	case !d.Algorithm().Available() || d.Algorithm().FromBytes(body) != d:
		n.corrupt = true
	default:
		var doc oci.Manifest
		if json.Unmarshal(body, &doc) == nil {
			n.fill(doc)
		}
	}
	return n, nil
}

// parallelReads bounds the manifests loadAll reads at once: enough to
// keep a disk's queue or an object store's connections busy, few enough
// not to crowd out the requests the mirror is serving.
const parallelReads = 16

// loadAll loads every manifest a walk from roots would reach (children
// of indexes and referrers), one level at a time with up to
// parallelReads reads at once, so that the walks then find them loaded:
// one read after another, 10,000 images wait 10,000 times on the store.
// It fails as load does, on a store failure.
func (g *graph) loadAll(ctx context.Context, roots []digest.Digest) error {
	seen := map[digest.Digest]bool{}
	var level []digest.Digest
	add := func(ds []digest.Digest) {
		for _, d := range ds {
			if _, loaded := g.nodes[d]; !loaded && !seen[d] {
				seen[d] = true
				level = append(level, d)
			}
		}
	}
	add(roots)
	for len(level) > 0 {
		nodes := make([]*node, len(level))
		keys := make([]digest.Digest, len(level))
		// A few long-lived readers, not a goroutine per manifest: each
		// would grow its stack anew to decode one. Each node is kept
		// (numbered, interned) as soon as it is read, one at a time: the
		// strings it was decoded with do not wait for the whole level.
		var keeping sync.Mutex
		eg, ectx := errgroup.WithContext(ctx)
		var next atomic.Int64
		for range min(parallelReads, len(level)) {
			eg.Go(func() error {
				for i := int(next.Add(1) - 1); i < len(level); i = int(next.Add(1) - 1) {
					n, err := g.parse(ectx, level[i])
					if err != nil {
						return err
					}
					keeping.Lock()
					keys[i] = g.keep(level[i], n)
					keeping.Unlock()
					nodes[i] = n
				}
				return nil
			})
		}
		if err := eg.Wait(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		done := level
		level = nil
		for i, k := range keys {
			g.nodes[k] = nodes[i]
		}
		for i, d := range done {
			add(nodes[i].manifests)
			add(g.referrers[d])
		}
	}
	return nil
}

func (g *graph) read(ctx context.Context, d digest.Digest) ([]byte, error) {
	return g.store.ReadSmall(ctx, d, oci.MaxManifestSize+1)
}

func (n *node) fill(doc oci.Manifest) {
	for _, m := range doc.Manifests {
		if !oci.ValidDigest(m.Digest) {
			continue
		}
		n.manifests = append(n.manifests, m.Digest)
		if m.Platform != nil && !oci.IsAttestation(m) {
			if n.platforms == nil {
				n.platforms = map[digest.Digest]string{}
			}
			n.platforms[m.Digest] = oci.PlatformString(m.Platform)
		}
	}
	n.blobs = doc.BlobDigests()
	if doc.Config != nil && oci.ValidDigest(doc.Config.Digest) {
		n.config = doc.Config.Digest
	}
}

// internWith replaces the node's digests by their interned copies.
func (n *node) internWith(in *storage.Interner) {
	for i, d := range n.manifests {
		n.manifests[i] = in.Digest(d)
	}
	for i, d := range n.blobs {
		n.blobs[i] = in.Digest(d)
	}
	if n.config != "" {
		n.config = in.Digest(n.config)
	}
	if len(n.platforms) > 0 {
		ps := make(map[digest.Digest]string, len(n.platforms))
		for d, p := range n.platforms {
			ps[in.Digest(d)] = in.String(p)
		}
		n.platforms = ps
	}
}

// reach is what a root keeps: the root, the manifests under it and their
// blobs.
type reach struct {
	manifests map[digest.Digest]bool
	blobs     map[digest.Digest]bool
}

func (r reach) all() []digest.Digest {
	out := make([]digest.Digest, 0, len(r.manifests)+len(r.blobs))
	for d := range r.manifests {
		out = append(out, d)
	}
	for d := range r.blobs {
		if !r.manifests[d] {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// reachIDs is what root keeps (reach) in a graph with ids: its
// manifests, sorted, and their blobs that are not manifests, sorted,
// appended to manifests and blobs.
func (g *graph) reachIDs(ctx context.Context, root digest.Digest, manifests, blobs []int32) ([]int32, []int32, error) {
	seen := map[digest.Digest]bool{}
	stack := []digest.Digest{root}
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return manifests, blobs, err
		}
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[d] {
			continue
		}
		seen[d] = true
		n, err := g.load(ctx, d)
		if err != nil {
			return manifests, blobs, err
		}
		manifests = append(manifests, g.ids.id(d))
		blobs = append(blobs, n.blobIDs...)
		stack = append(stack, n.manifests...)
		stack = append(stack, g.referrers[d]...)
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

// reach walks everything root references.
func (g *graph) reach(ctx context.Context, root digest.Digest) (reach, error) {
	r := reach{manifests: map[digest.Digest]bool{}, blobs: map[digest.Digest]bool{}}
	return r, g.walk(ctx, root, r)
}

// walk adds root and what it references to r.
func (g *graph) walk(ctx context.Context, root digest.Digest, r reach) error {
	stack := []digest.Digest{root}
	for len(stack) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if r.manifests[d] {
			continue
		}
		r.manifests[d] = true
		n, err := g.load(ctx, d)
		if err != nil {
			return err
		}
		for _, b := range n.blobs {
			r.blobs[b] = true
		}
		stack = append(stack, n.manifests...)
		stack = append(stack, g.referrers[d]...)
	}
	return nil
}
