package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"

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
	if !mayNameSubject(tag) {
		return "", false
	}
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

// mayNameSubject is false for a tag too short for referrerTagSubject to
// find a subject in (an algorithm's name and a 64-digit hex, the shortest
// digest): most tags, which then cost no string.
func mayNameSubject[S string | []byte](tag S) bool { return len(tag) >= len("sha256-")+64 }

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
	g.nodes[d] = n
	return n, nil
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
	case !oci.Matches(d, body):
		n.corrupt = true
	default:
		var doc oci.Manifest
		if json.Unmarshal(body, &doc) == nil {
			n.fill(doc)
		}
	}
	return n, nil
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
