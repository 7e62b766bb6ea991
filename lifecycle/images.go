package lifecycle

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// States of an image besides the mirror states (storage.FillPartial,
// storage.FillComplete).
const (
	// StateMissing: the image's manifest is not in the store.
	StateMissing = "missing"
	// StateCorrupt: the image's stored manifest does not match its digest.
	StateCorrupt = "corrupt"
)

// Image is a cached image.
type Image struct {
	// Upstream and Repo: where it came from, e.g. docker.io and
	// library/nginx.
	Upstream string `json:"upstream"`
	Repo     string `json:"repo"`
	// Tags of Repo that point to it, sorted.
	Tags []string `json:"tags,omitempty"`
	// Digest and MediaType are the root manifest's (index or image).
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"media_type,omitempty"`
	// Platforms stored: those its mirror record lists, else those of the
	// stored children of an index, or the config's of an image.
	Platforms []string `json:"platforms,omitempty"`
	// PlatformsLeftOut are the platforms of an index's entries whose
	// manifests are not stored (attestations aside), sorted.
	PlatformsLeftOut []string `json:"platforms_left_out,omitempty"`
	// Size is the indexed size of its manifests and blobs; content shared
	// with other images counts in each.
	Size int64 `json:"size"`
	// Manifests and Blobs count the indexed content it keeps.
	Manifests int `json:"manifests"`
	Blobs     int `json:"blobs"`
	// LastPull is the latest of: its tags' fetch and revalidation, and,
	// for the manifests and blobs no other image keeps, their fetch,
	// recorded pulls (Index.TouchManifest) and last access (a shared base
	// layer says nothing about which image was pulled). If that leaves
	// nothing, the shared content's times count.
	LastPull time.Time `json:"last_pull"`
	// State is its mirror state (partial, complete), StateMissing,
	// StateCorrupt, or empty if none is recorded.
	State string `json:"state,omitempty"`
	// Pinned: its digest or one of its tags is pinned; it is never
	// evicted.
	Pinned bool `json:"pinned"`
}

// Name is the image's upstream and repository, e.g.
// docker.io/library/nginx.
func (im Image) Name() string {
	if im.Upstream == "" {
		return im.Repo
	}
	return im.Upstream + "/" + im.Repo
}

// entry is an image with what it keeps.
type entry struct {
	Image
	reach keeps
	// folded are the mirror-only roots folded into it (see roots).
	folded []imageKey
	// artifactTags are the referrers and cosign tags (sha256-<hex>.sig...)
	// of its signatures, attestations and SBOMs, folded into it: they
	// leave with it.
	artifactTags []artifactTag
	// plainTags: one of its tags is not a referrers or cosign tag. A
	// model read without tags keeps those only (see Collector.model).
	plainTags bool
}

// artifactTag is a tag of a signature, attestation or SBOM kept with an
// image, and the manifest it names.
type artifactTag struct {
	key imageKey
	tag string
}

// keeps is what an image keeps (a reach, compacted: at 100k images the
// maps of a reach per image are ~50 MiB), as digest identifiers (model.ids:
// 4 bytes each, not a 71-byte string).
type keeps struct {
	// ds: its manifests and blobs; manifests: its manifests, sorted.
	// Images with the same root share them: not to be modified.
	ds, manifests []int32
}

// all returns the manifests and blobs kept (not to be modified).
func (k keeps) all() []int32 { return k.ds }

// manifest reports whether id is one of the manifests kept.
func (k keeps) manifest(id int32) bool {
	_, ok := slices.BinarySearch(k.manifests, id)
	return ok
}

// fill is what the model uses of a fill record: 48 bytes, not 96.
type fill struct {
	state     string
	platforms []string
	updatedAt int64 // storage.UnixNano
}

// updated is when the record was last written.
func (f fill) updated() time.Time { return storage.FromUnixNano(f.updatedAt) }

// model is the cache seen as images.
type model struct {
	recs *storage.ImageTable
	// ids number the digests: those of recs.Content, then the others
	// the images keep.
	ids    *digestIDs
	images []*entry
	// refs counts the images keeping each digest, by identifier.
	refs []int32
	// mirrors are the mirror states by repository and digest.
	mirrors map[imageKey]fill
}

func (e *entry) key() imageKey { return imageKey{e.Upstream, e.Repo, e.Digest} }

// roots are the image itself and the mirror-only roots folded into it.
func (e *entry) roots() []imageKey { return append([]imageKey{e.key()}, e.folded...) }

// info is the records of the digest numbered id (none for those not in
// the table).
func (m *model) info(id int32) storage.ContentInfo {
	if int(id) < m.recs.Content.Len() {
		return m.recs.Content.Info(int(id))
	}
	return storage.ContentInfo{}
}

// size is the indexed size of one digest, as Index.StoredBytes counts it.
func (m *model) size(id int32) int64 { return m.info(id).Size }

// refsOf is how many images keep d.
func (m *model) refsOf(d digest.Digest) int32 {
	if id, ok := m.ids.lookup(d); ok {
		return m.refs[id]
	}
	return 0
}

// keptSize is the indexed size of what the images keep.
func (m *model) keptSize() int64 {
	var n int64
	for id, c := range m.refs {
		if c > 0 {
			n += m.size(int32(id))
		}
	}
	return n
}

// Images lists the cached images, sorted by name, tags and digest.
func (c *Collector) Images(ctx context.Context) ([]Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refresh(ctx); err != nil {
		return nil, err
	}
	if err := c.index.Flush(); err != nil {
		return nil, err
	}
	m, err := c.model(ctx, true, true)
	if err != nil {
		return nil, err
	}
	out := make([]Image, len(m.images))
	for i, e := range m.images {
		out[i] = e.Image
	}
	return out, nil
}

type imageKey struct {
	upstream, repo string
	digest         digest.Digest
}

// model reads the index and the manifests into images; with platforms,
// it also reads the configs of images whose platform is not recorded.
// Without tags, an image keeps only its referrers and cosign tags (those
// that decide what is folded into what): at 100k images the other tags
// (1M) are ~15% of the model, and choosing victims does not need them
// (see evictPlan.victimTags).
//
// The index is read in one transaction (Index.ReadImageTable), each tag
// going straight into its image: no copy of the tag records is kept, the
// content records are a table sorted by digest, each image's digest and
// name one shared string (at 100k images, 1M tags), and what an image
// keeps digest identifiers into that table (digestIDs).
func (c *Collector) model(ctx context.Context, platforms, tags bool) (*model, error) {
	g, err := c.referrersGraph()
	if err != nil {
		return nil, err
	}
	in := &storage.Interner{}
	g.intern = in
	entries := map[imageKey]*entry{}
	get := func(k imageKey) *entry {
		e, ok := entries[k]
		if !ok {
			e = &entry{Image: Image{Upstream: k.upstream, Repo: k.repo, Digest: k.digest}}
			entries[k] = e
		}
		return e
	}
	recs, err := c.index.ReadImageTable(in, func(t *storage.TagInfo) {
		if !t.OK || !oci.ValidDigest(t.Digest) {
			return
		}
		e := get(imageKey{t.Upstream, t.Repo, t.Digest})
		if _, artifact := referrerTagSubject(t.Tag); !artifact {
			e.plainTags = true
			if tags {
				e.Tags = append(e.Tags, t.Tag)
			}
		} else {
			e.Tags = append(e.Tags, t.Tag)
		}
		e.LastPull = latest(e.LastPull, t.FetchedAt, t.CheckedAt)
		if t.Pinned {
			e.Pinned = true
		}
		g.addReferrerTag(in, t.Tag, t.Digest)
	})
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		// Appended one by one: up to twice as long as needed.
		if cap(e.Tags) > len(e.Tags) {
			e.Tags = slices.Clip(slices.Clone(e.Tags))
		}
	}
	mirrors := make(map[imageKey]fill, len(recs.Fills))
	for _, me := range recs.Fills {
		if oci.ValidDigest(me.Digest) {
			k := imageKey{me.Upstream, me.Repo, me.Digest}
			mirrors[k] = fill{state: me.State, platforms: me.Platforms, updatedAt: storage.UnixNano(me.UpdatedAt)}
			get(k)
		}
	}
	recs.Fills = nil // in mirrors now
	// Pinned digests: their images are pinned; one without an image
	// is one, named after its first holder.
	pinned := map[digest.Digest]bool{}
	for key := range recs.Pins {
		if d, err := digest.Parse(key); err == nil {
			pinned[d] = false // true once an image has it
		}
	}
	if len(pinned) > 0 {
		for k, e := range entries {
			if _, ok := pinned[k.digest]; ok {
				e.Pinned, pinned[k.digest] = true, true
			}
		}
		for d, has := range pinned {
			if has {
				continue
			}
			k := imageKey{digest: in.Digest(d)}
			if holder, ok := recs.FirstHolder[d]; ok {
				if host, repo, ok := strings.Cut(holder, "/"); ok {
					k.upstream, k.repo = host, repo
				}
			}
			get(k).Pinned = true
		}
	}

	// What each keeps.
	roots := make([]digest.Digest, 0, len(entries))
	for k := range entries {
		roots = append(roots, k.digest)
	}
	// Blobs are numbered as the manifests are read: no string is kept
	// for them (at 100k images, 300k).
	ids := newDigestIDs(recs.Content)
	g.ids, g.keepConfig = ids, platforms
	if err := g.loadAll(ctx, roots); err != nil {
		return nil, err
	}
	// Every digest is interned by now: the interner's map can go.
	g.intern = nil
	reaches := map[digest.Digest]keeps{}
	var children idSet
	for _, e := range entries {
		k, ok := reaches[e.Digest]
		if !ok {
			var err error
			if k, err = g.reachIDs(ctx, e.Digest); err != nil {
				return nil, err
			}
			reaches[e.Digest] = k
		}
		e.reach = k
		self, _ := ids.lookup(e.Digest)
		for _, id := range k.manifests {
			if id != self {
				children.add(id)
			}
		}
	}
	reaches = nil
	isChild := func(d digest.Digest) bool {
		id, ok := ids.lookup(d)
		return ok && children.has(id)
	}
	keepsManifest := func(e *entry, d digest.Digest) bool {
		id, ok := ids.lookup(d)
		return ok && e.reach.manifest(id)
	}
	// A mirror record alone on a child of an index (a client pulled the
	// child by digest) is part of the index's image; so is a signature,
	// attestation or SBOM named only by referrers or cosign tags.
	var listed, folded []*entry
	for _, e := range entries {
		if !e.plainTags && !e.Pinned && isChild(e.Digest) {
			folded = append(folded, e)
		} else {
			listed = append(listed, e)
		}
	}
	for _, e := range listed {
		for _, f := range folded {
			if keepsManifest(e, f.Digest) {
				e.folded = append(e.folded, f.key())
				for _, tag := range f.Tags {
					e.artifactTags = append(e.artifactTags, artifactTag{f.key(), tag})
				}
			}
		}
	}

	m := &model{recs: recs, ids: ids, refs: make([]int32, ids.n()), mirrors: mirrors}
	for _, e := range listed {
		for _, id := range e.reach.all() {
			m.refs[id]++
		}
	}
	for _, e := range listed {
		c.describe(ctx, g, m, e, platforms)
		m.images = append(m.images, e)
	}
	sort.Slice(m.images, func(i, j int) bool {
		a, b := m.images[i], m.images[j]
		return cmp.Or(cmp.Compare(a.Name(), b.Name()), slices.Compare(a.Tags, b.Tags), cmp.Compare(a.Digest, b.Digest)) < 0
	})
	return m, nil
}

// describe fills in an image's size, last pull, state and platforms.
func (c *Collector) describe(ctx context.Context, g *graph, m *model, e *entry, platforms bool) {
	ct := m.recs.Content
	sort.Strings(e.Tags)
	// Times recorded per digest tell this image's pulls only for digests
	// no other image keeps; the others are a fallback.
	var shared time.Time
	note := func(refs int32, t time.Time) {
		if refs == 1 {
			e.LastPull = latest(e.LastPull, t)
		} else {
			shared = latest(shared, t)
		}
	}
	for _, k := range e.roots() {
		if rec, _ := ct.Lookup(k.digest); rec.Manifest {
			note(m.refsOf(k.digest), rec.FetchedAt)
		}
	}
	for _, id := range e.reach.all() {
		rec := m.info(id)
		e.Size += rec.Size
		if rec.Manifest {
			e.Manifests++
		}
		if rec.Blob {
			e.Blobs++
			note(m.refs[id], rec.LastAccess)
		}
		if e.reach.manifest(id) {
			note(m.refs[id], rec.Pulled)
		}
	}
	if e.LastPull.IsZero() {
		e.LastPull = shared
	}
	if rec, _ := ct.Lookup(e.Digest); rec.Manifest {
		e.MediaType = rec.MediaType
	}
	rec, mirrored := m.mirrors[e.key()]
	root := g.nodes[e.Digest]
	switch {
	case root == nil || root.missing:
		e.State = StateMissing
	case root.corrupt:
		e.State = StateCorrupt
	case mirrored:
		e.State = rec.state
	}
	if root != nil {
		left := map[string]bool{}
		for d, p := range root.platforms {
			if !ct.IsManifest(d) {
				left[p] = true
			}
		}
		e.PlatformsLeftOut = slices.Sorted(maps.Keys(left))
	}
	if len(rec.platforms) > 0 {
		e.Platforms = slices.Clone(rec.platforms)
		return
	}
	if root == nil {
		return
	}
	seen := map[string]bool{}
	for d, p := range root.platforms {
		if ct.IsManifest(d) && !seen[p] {
			seen[p] = true
			e.Platforms = append(e.Platforms, p)
		}
	}
	sort.Strings(e.Platforms)
	if platforms && root.config != "" && len(root.manifests) == 0 {
		if p := c.configPlatform(ctx, root.config); p != "" {
			e.Platforms = []string{p}
		}
	}
}

// maxConfigSize bounds what is read of an image config for its platform.
const maxConfigSize = 16 << 20

// configPlatform reads an image config's platform, or returns "".
func (c *Collector) configPlatform(ctx context.Context, d digest.Digest) string {
	rc, err := c.store.Open(ctx, "", d, 0)
	if err != nil {
		return ""
	}
	defer rc.Close()
	var cfg v1.Platform
	if err := json.NewDecoder(io.LimitReader(rc, maxConfigSize)).Decode(&cfg); err != nil || cfg.OS == "" {
		return ""
	}
	return oci.PlatformString(&cfg)
}

func latest(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}
