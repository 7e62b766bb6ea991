package lifecycle

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/docker-mirror/docker-mirror/gchold"
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
	// stored children of an index (and of the indexes it lists), or the
	// config's of an image (a schema 1 image's manifest's).
	Platforms []string `json:"platforms,omitempty"`
	// PlatformsLeftOut are the platforms of an index's entries (and of
	// the indexes it lists) whose manifests are not stored (attestations
	// aside), sorted.
	PlatformsLeftOut []string `json:"platforms_left_out,omitempty"`
	// Size is the indexed size of its manifests and blobs; content shared
	// with other images counts in each.
	Size int64 `json:"size"`
	// Manifests and Blobs count the indexed content it keeps.
	Manifests int `json:"manifests"`
	Blobs     int `json:"blobs"`
	// LastPull is the latest of: its tags' fetch and revalidation, the
	// recorded pulls (Index.TouchManifest) of its root manifest, and,
	// for the manifests and blobs no other image keeps, their fetch,
	// recorded pulls and last access (a shared base layer says nothing
	// about which image was pulled). If that leaves nothing, the shared
	// content's times count. A pull of its root counts even if another
	// image keeps it (the same image in another repository, an index
	// listing it): that image keeps all this one does, and a client
	// pulling this one through a tag the upstream cannot revalidate (an
	// outage) would otherwise find it evicted, its tag gone.
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

// The image model. At 100k images (1M tags, 400k digests) round 6's
// model, an Image per image in a map keyed by strings, its mirror
// records in another and a digest string per image, held ~1.7 KiB per
// image; an entry is now ~90 bytes, a digest an identifier into the
// index's content table (digestIDs), a repository name one shared pair
// of strings, and what an image keeps a span of one flat []int32. An
// Image is built only for what is shown: `ls`'s list, an eviction's
// victims.

// imageName is a repository: upstream and repository name.
type imageName struct{ upstream, repo string }

// name is "upstream/repo" (Image.Name).
func (n imageName) name() string { return Image{Upstream: n.upstream, Repo: n.repo}.Name() }

// imageKey is an image's repository (model.names) and digest (model.ids).
type imageKey struct{ name, id int32 }

// entry is an image (or a root folded into one) and what it keeps.
type entry struct {
	imageKey
	// lastPull: Image.LastPull (its tags' times, then, once the model
	// is read, its content's).
	lastPull time.Time
	// tags: all of them in a model read with tags; else only the
	// referrers and cosign tags (sha256-<hex>.sig...) of a signature,
	// attestation or SBOM, which leave with the image it is folded into.
	// They are one string (see joinTag): at 100k images, 1M tags as
	// strings were ~20 MiB.
	tags string
	// fill is its mirror record, if fill.ok.
	fill fill
	// off, nManifests, n: what it keeps is model.keeps[off:off+n], its
	// manifests (sorted) first. Images with the same root share it.
	off, nManifests, n int32
	// state: stateMissing or stateCorrupt if its root manifest is.
	state  uint8
	pinned bool
	// plainTags: one of its tags is not a referrers or cosign tag (a
	// model read without tags keeps those only, see Collector.model).
	plainTags bool
}

// Root manifest states of an entry.
const (
	stateMissing = 1 + iota
	stateCorrupt
)

// fill is what the model uses of a fill record: 16 bytes.
type fill struct {
	updatedAt int64 // storage.UnixNano
	// platforms and state index model.platforms and model.states.
	platforms int32
	state     uint8
	ok        bool
}

// updated is when the record was last written.
func (f fill) updated() time.Time { return storage.FromUnixNano(f.updatedAt) }

// model is the cache seen as images.
type model struct {
	recs *storage.ImageTable
	// ids number the digests: those of recs.Content, then the others
	// the images keep.
	ids   *digestIDs
	names []imageName
	// entries are every root: the images and the roots folded into them.
	entries []entry
	// images are the images (entries), in a model read with tags sorted
	// by name, tags and digest.
	images []int32
	// folded are the entries folded into an image (see roots), by its
	// entry.
	folded map[int32][]int32
	// keeps holds what the entries keep (entry.off).
	keeps []int32
	// refs counts the images keeping each digest, by identifier.
	refs []int32
	// states and platforms are the fill records' states and platform
	// lists, each once (platforms[0] is none).
	states    []string
	platforms [][]string
	// indexPlatforms are the platforms of the children of the images
	// that are indexes, and of the indexes those list, by entry; an
	// image model read with platforms keeps each image's config's
	// platform in configs.
	indexPlatforms map[int32][]childPlatform
	configs        map[int32]string
}

// all is what e keeps: its manifests and blobs (not to be modified).
func (m *model) all(e *entry) []int32 { return m.keeps[e.off : e.off+e.n : e.off+e.n] }

// keepsManifest reports whether id is one of the manifests e keeps.
func (m *model) keepsManifest(e *entry, id int32) bool {
	_, ok := slices.BinarySearch(m.keeps[e.off:e.off+e.nManifests], id)
	return ok
}

// roots are the entries of e's roots: itself (i) and the mirror-only
// roots folded into it.
func (m *model) roots(i int32) []int32 { return append([]int32{i}, m.folded[i]...) }

// name is the image name of e ("upstream/repo").
func (m *model) name(e *entry) imageName { return m.names[e.name] }

// digest is the digest of e's root (a new string for most).
func (m *model) digest(e *entry) digest.Digest { return m.ids.digest(e.id) }

// info is the records of the digest numbered id (none for those not in
// the table).
func (m *model) info(id int32) storage.ContentInfo {
	if int(id) < m.recs.Content.Len() {
		return m.recs.Content.Info(int(id))
	}
	return storage.ContentInfo{}
}

// size is the indexed size of one digest, as Index.StoredBytes counts it.
func (m *model) size(id int32) int64 {
	if int(id) < m.recs.Content.Len() {
		return m.recs.Content.SizeID(int(id))
	}
	return 0
}

// isManifest reports whether the digest numbered id has a manifest
// record.
func (m *model) isManifest(id int32) bool {
	return int(id) < m.recs.Content.Len() && m.recs.Content.ManifestID(int(id))
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
	defer c.opts.GCHold.Enter()()
	l, err := c.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, l.Len())
	err = l.Each(func(im Image) error {
		out = append(out, im)
		return nil
	})
	return out, err
}

// ImageList is the cached images as read once (Collector.ListImages):
// an Image is made as each is visited, so that a caller that writes or
// copies them one by one never holds them all (at 100k images, ~45 MiB).
type ImageList struct {
	m    *model
	hold *gchold.Hold
}

// ListImages reads the cached images, to be visited in order by Each.
// The list reads nothing more: it does not change with the cache. It
// does not wait for a pass that runs: it reads the index as it is (one
// read transaction) and the manifests, and leaves out the other
// replicas' records written since the pass read them.
func (c *Collector) ListImages(ctx context.Context) (*ImageList, error) {
	defer c.opts.GCHold.Enter()()
	// A pass holds c.mu throughout, walking the whole store (minutes on
	// a large S3 store): the status page and its actions would wait for
	// it. The shared records are read in only while no pass runs: a
	// pass read them as it began, and a read meanwhile could bring back
	// records it is removing.
	if c.tryLock() {
		err := c.refresh(ctx)
		c.unlock()
		if err != nil {
			return nil, err
		}
	}
	if err := c.index.Flush(); err != nil {
		return nil, err
	}
	m, err := c.model(ctx, true, true)
	if err != nil {
		return nil, err
	}
	m.refs = nil // counted: the images' last pulls are known
	// An eviction or a pass removing images meanwhile (the list does not
	// wait for them) removes their roots from the store after the index
	// was read: such an image, its root's record read then and gone from
	// the index now, is gone, not content the store lost.
	var gone error
	m.images = slices.DeleteFunc(m.images, func(i int32) bool {
		e := &m.entries[i]
		if e.state != stateMissing || e.pinned || !m.isManifest(e.id) || gone != nil {
			return false
		}
		_, found, err := c.index.Manifest(m.digest(e))
		gone = err
		return err == nil && !found
	})
	if gone != nil {
		return nil, gone
	}
	return &ImageList{m: m, hold: c.opts.GCHold}, nil
}

// Len is the number of images.
func (l *ImageList) Len() int { return len(l.m.images) }

// Each calls fn with every image, sorted by name, tags and digest (as
// Images lists them), each a new Image; it stops at fn's first error and
// returns it. It may be called again.
func (l *ImageList) Each(fn func(Image) error) error {
	defer l.hold.Enter()() // the caller builds its own list from the images meanwhile
	for _, i := range l.m.images {
		if err := fn(l.m.image(i)); err != nil {
			return err
		}
	}
	return nil
}

// model reads the index and the manifests into images; with platforms,
// it also reads the configs of images whose platform is not recorded.
// Without tags, an image keeps only its referrers and cosign tags (those
// that decide what is folded into what): at 100k images the other tags
// (1M) are ~15% of the model, and choosing victims does not need them
// (see evictPlan.victimTags).
//
// The index is read in one transaction (Index.ReadImageTableRaw), each
// tag going straight into its image: no copy of the tag records is
// kept, the content records are a table sorted by digest, and digests
// are identifiers into that table (digestIDs), not strings.
func (c *Collector) model(ctx context.Context, platforms, tags bool) (*model, error) {
	g, err := c.referrersGraph()
	if err != nil {
		return nil, err
	}
	in := &storage.Interner{}
	m := &model{folded: map[int32][]int32{}, states: []string{""}, platforms: [][]string{nil}, indexPlatforms: map[int32][]childPlatform{}}
	byKey := map[imageKey]int32{}
	nameIDs := map[imageName]int32{}
	nameID := func(upstream, repo string) int32 {
		n := imageName{upstream, repo}
		id, ok := nameIDs[n]
		if !ok {
			id = int32(len(m.names))
			nameIDs[n] = id
			m.names = append(m.names, n)
		}
		return id
	}
	get := func(k imageKey) *entry {
		i, ok := byKey[k]
		if !ok {
			i = int32(len(m.entries))
			byKey[k] = i
			m.entries = append(m.entries, entry{imageKey: k})
		}
		return &m.entries[i]
	}
	// The manifests are read from the store as their roots are read from
	// the index (loadAhead), once the content table is known.
	var ig *idGraph
	ahead, doneAhead := func(int32) {}, func() {}
	defer func() { doneAhead() }() // on a failed read
	start := func(table *storage.ContentTable) {
		if m.ids != nil {
			return
		}
		m.ids = newDigestIDs(table)
		ig = newIDGraph(g, m.ids)
		ig.details, ig.keepConfig = true, platforms
		ahead, doneAhead = ig.loadAhead(ctx)
	}
	// The fill records come after the tags, each folded into its entry as
	// it is read (at 100k images, ~15 MiB as a list).
	stateIDs := map[string]uint8{"": 0}
	platformIDs := map[string]int32{"": 0}
	fillEntry := func(table *storage.ContentTable, me *storage.FillEntry) {
		start(table)
		if !oci.ValidDigest(me.Digest) {
			return
		}
		st, ok := stateIDs[me.State]
		if !ok {
			st = uint8(len(m.states))
			stateIDs[me.State] = st
			m.states = append(m.states, me.State)
		}
		joined := strings.Join(me.Platforms, "\x00")
		pl, ok := platformIDs[joined]
		if !ok {
			pl = int32(len(m.platforms))
			platformIDs[joined] = pl
			m.platforms = append(m.platforms, me.Platforms)
		}
		e := get(imageKey{nameID(me.Upstream, me.Repo), m.ids.id(me.Digest)})
		e.fill = fill{updatedAt: storage.UnixNano(me.UpdatedAt), platforms: pl, state: st, ok: true}
		ahead(e.id)
	}
	recs, err := c.index.ReadImageTableFills(in, func(t *storage.TagInfo) {
		start(t.Table)
		if !t.OK {
			return
		}
		id, ok := m.ids.idBytes(t.RawDigest)
		if !ok {
			return
		}
		e := get(imageKey{nameID(t.Upstream, t.Repo), id})
		var subject digest.Digest
		var artifact bool
		if mayNameSubject(t.RawTag) { // no string made for the others
			subject, artifact = referrerTagSubject(string(t.RawTag))
		}
		if !artifact {
			e.plainTags = true
		}
		if tags || artifact {
			e.tags = joinTag(e.tags, t.RawTag)
		}
		e.lastPull = latest(e.lastPull, t.FetchedAt, t.CheckedAt)
		if t.Pinned {
			e.pinned = true
		}
		if artifact {
			s := m.ids.id(subject)
			ig.referrers[s] = append(ig.referrers[s], id)
		}
		ahead(id)
	}, fillEntry)
	doneAhead()
	if err != nil {
		return nil, err
	}
	m.recs = recs
	start(recs.Content)
	ids := m.ids
	// Pinned digests: their images are pinned; one without an image
	// is one, named after its first holder.
	pinned := map[int32]bool{}
	for key := range recs.Pins {
		if d, err := digest.Parse(key); err == nil {
			pinned[ids.id(d)] = false // true once an image has it
		}
	}
	if len(pinned) > 0 {
		for i := range m.entries {
			e := &m.entries[i]
			if _, ok := pinned[e.id]; ok {
				e.pinned, pinned[e.id] = true, true
			}
		}
		for id, has := range pinned {
			if has {
				continue
			}
			var host, repo string
			if holder, ok := recs.FirstHolder[ids.digest(id)]; ok {
				if h, r, ok := strings.Cut(holder, "/"); ok {
					host, repo = h, r
				}
			}
			get(imageKey{nameID(host, repo), id}).pinned = true
		}
	}
	byKey, nameIDs = nil, nil

	// What each keeps. The manifests read are numbered as they are
	// read: no string is kept for a digest (at 100k images, the roots'
	// and their nodes' keys as strings were ~25 MiB).
	roots := make([]int32, 0, len(m.entries))
	rootSeen := idSet{}
	for i := range m.entries {
		if id := m.entries[i].id; !rootSeen.has(id) {
			rootSeen.add(id)
			roots = append(roots, id)
		}
	}
	rootSeen = nil
	g.referrers = nil // numbered in ig
	if err := ig.loadAll(ctx, roots); err != nil {
		return nil, err
	}
	roots = nil
	type span struct{ off, nManifests, n int32 }
	reaches := map[int32]span{}
	var children idSet
	var manifests, blobs []int32
	for i := range m.entries {
		e := &m.entries[i]
		sp, ok := reaches[e.id]
		if !ok {
			var err error
			if manifests, blobs, err = ig.reachIDs(ctx, e.id, manifests[:0], blobs[:0]); err != nil {
				return nil, err
			}
			sp = span{off: int32(len(m.keeps)), nManifests: int32(len(manifests)), n: int32(len(manifests) + len(blobs))}
			m.keeps = append(append(m.keeps, manifests...), blobs...)
			reaches[e.id] = sp
			for _, id := range manifests {
				if id != e.id {
					children.add(id)
				}
			}
		}
		e.off, e.nManifests, e.n = sp.off, sp.nManifests, sp.n
	}
	reaches = nil
	m.keeps = slices.Clip(m.keeps)
	// A mirror record alone on a child of an index (a client pulled the
	// child by digest) is part of the index's image; so is a signature,
	// attestation or SBOM named only by referrers or cosign tags.
	var listed, folded []int32
	for i := range m.entries {
		e := &m.entries[i]
		if !e.plainTags && !e.pinned && children.has(e.id) {
			folded = append(folded, int32(i))
		} else {
			listed = append(listed, int32(i))
		}
	}
	for _, i := range listed {
		e := &m.entries[i]
		for _, f := range folded {
			if m.keepsManifest(e, m.entries[f].id) {
				m.folded[i] = append(m.folded[i], f)
			}
		}
	}

	m.refs = make([]int32, ids.n())
	for _, i := range listed {
		for _, id := range m.all(&m.entries[i]) {
			m.refs[id]++
		}
	}
	// The images whose platform only their config says, by config.
	byConfig := map[int32][]int32{}
	for _, i := range listed {
		e := &m.entries[i]
		m.notePulls(i)
		root := ig.nodes[e.id]
		switch {
		case root == nil || root.missing:
			e.state = stateMissing
		case root.corrupt:
			e.state = stateCorrupt
		}
		if root == nil {
			continue
		}
		if ps := ig.platformsWithin(root); len(ps) > 0 {
			m.indexPlatforms[i] = ps
		}
		if platforms && root.config() != 0 && len(root.manifests) == 0 && len(m.platforms[e.fill.platforms]) == 0 {
			byConfig[root.config()-1] = append(byConfig[root.config()-1], i)
		} else if platforms && root.config() == 0 && len(m.platforms[e.fill.platforms]) == 0 && isSchema1(m.info(e.id).MediaType) {
			// A schema 1 manifest has no config: it names its platform itself.
			byConfig[e.id] = append(byConfig[e.id], i)
		}
	}
	if err := readConfigPlatforms(ctx, m, ig, byConfig); err != nil {
		return nil, err
	}
	m.images = listed
	if tags {
		for _, i := range m.images {
			m.entries[i].tags = sortTags(m.entries[i].tags)
		}
		full := make([]string, len(m.names))
		for i, n := range m.names {
			full[i] = n.name()
		}
		slices.SortFunc(m.images, func(i, j int32) int {
			a, b := &m.entries[i], &m.entries[j]
			if a.imageKey == b.imageKey {
				return 0
			}
			if c := cmp.Or(cmp.Compare(full[a.name], full[b.name]), strings.Compare(a.tags, b.tags)); c != 0 {
				return c
			}
			return cmp.Compare(m.digest(a), m.digest(b)) // only on a tie: a digest is a new string
		})
	}
	return m, nil
}

// notePulls makes the last pull of image i (its tags' times so far) the
// latest of: those, its root manifest's recorded pulls and, for the
// manifests and blobs no other image keeps, their fetch, recorded pulls
// and last access; if that leaves nothing, those of the shared ones (see
// Image.LastPull). m.refs must count the images.
func (m *model) notePulls(i int32) {
	e := &m.entries[i]
	var shared time.Time
	note := func(refs int32, t time.Time) {
		if refs == 1 {
			e.lastPull = latest(e.lastPull, t)
		} else {
			shared = latest(shared, t)
		}
	}
	for _, r := range m.roots(i) {
		id := m.entries[r].id
		if rec := m.info(id); rec.Manifest {
			note(m.refs[id], rec.FetchedAt)
		}
	}
	for k, id := range m.all(e) {
		rec := m.info(id)
		if rec.Blob {
			note(m.refs[id], rec.LastAccess)
		}
		if k < int(e.nManifests) {
			refs := m.refs[id]
			if id == e.id {
				refs = 1 // its root: a pull of it is one of this image
			}
			note(refs, rec.Pulled)
		}
	}
	if e.lastPull.IsZero() {
		e.lastPull = shared
	}
}

// image is image i as listed: its size, state and platforms.
func (m *model) image(i int32) Image {
	e := &m.entries[i]
	n := m.name(e)
	im := Image{Upstream: n.upstream, Repo: n.repo, Tags: splitTags(e.tags), Digest: m.digest(e), LastPull: e.lastPull, Pinned: e.pinned}
	for _, id := range m.all(e) {
		rec := m.info(id)
		im.Size += rec.Size
		if rec.Manifest {
			im.Manifests++
		}
		if rec.Blob {
			im.Blobs++
		}
	}
	if rec := m.info(e.id); rec.Manifest {
		im.MediaType = rec.MediaType
	}
	switch {
	case e.state == stateMissing:
		im.State = StateMissing
	case e.state == stateCorrupt:
		im.State = StateCorrupt
	case e.fill.ok:
		im.State = m.states[e.fill.state]
	}
	children := m.indexPlatforms[i]
	if children != nil {
		left := map[string]bool{}
		for _, p := range children {
			if !m.isManifest(p.id) {
				left[p.platform] = true
			}
		}
		im.PlatformsLeftOut = slices.Sorted(maps.Keys(left))
	}
	if ps := m.platforms[e.fill.platforms]; e.fill.ok && len(ps) > 0 {
		im.Platforms = slices.Clone(ps)
		return im
	}
	if children != nil {
		seen := map[string]bool{}
		for _, p := range children {
			if m.isManifest(p.id) && !seen[p.platform] {
				seen[p.platform] = true
				im.Platforms = append(im.Platforms, p.platform)
			}
		}
		sort.Strings(im.Platforms)
	}
	if p, ok := m.configs[i]; ok {
		im.Platforms = []string{p}
	}
	return im
}

// readConfigPlatforms sets m.configs: the platform of each config of
// byConfig (config identifier, or a schema 1 root manifest's, to the
// entries it is the config of), read parallelReads at once as loadAll
// reads manifests (one after another, at 100k single-platform images, a
// third of `ls`'s time waited on them).
// They are read once the fill records are (after the tags): an image
// whose record names its platforms needs no config.
func readConfigPlatforms(ctx context.Context, m *model, ig *idGraph, byConfig map[int32][]int32) error {
	if len(byConfig) == 0 {
		return nil
	}
	configs := slices.Sorted(maps.Keys(byConfig))
	found := make([]string, len(configs))
	if err := eachParallel(ctx, len(configs), func(ctx context.Context, k int) error {
		found[k] = ig.g.configPlatform(ctx, m.ids.digest(configs[k]))
		return nil
	}); err != nil {
		return err
	}
	for k, id := range configs {
		if found[k] == "" {
			continue
		}
		if m.configs == nil {
			m.configs = map[int32]string{}
		}
		p := ig.platforms.String(found[k]) // a few platforms, shared by many images
		for _, i := range byConfig[id] {
			m.configs[i] = p
		}
	}
	return ctx.Err()
}

// maxConfigSize bounds what is read of an image config for its platform.
const maxConfigSize = 16 << 20

// configPlatform reads an image config's platform, or a Docker schema 1
// manifest's, or returns "".
func (g *graph) configPlatform(ctx context.Context, d digest.Digest) string {
	b, err := g.store.ReadSmall(ctx, d, maxConfigSize)
	if err != nil {
		return ""
	}
	var cfg struct {
		v1.Platform
		SchemaVersion int `json:"schemaVersion"` // a manifest's: a config has none
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return ""
	}
	if cfg.SchemaVersion == 1 && cfg.OS == "" && cfg.Architecture != "" {
		cfg.OS = "linux" // schema 1 names the architecture only: its images are Linux's
	}
	if cfg.OS == "" {
		return ""
	}
	return oci.PlatformString(&cfg.Platform)
}

// isSchema1 reports whether a manifest media type is Docker's schema 1.
func isSchema1(mediaType string) bool {
	return mediaType == oci.MediaTypeDockerSchema1 || mediaType == oci.MediaTypeDockerSchema1Signed
}

// Tags kept as one string: joined by a NUL byte, which no tag holds
// and which sorts before every byte a tag may hold, so that strings of
// sorted tags compare as their lists do (slices.Compare).
const tagSep = "\x00"

// joinTag is tags with tag added.
func joinTag[S string | []byte](tags string, tag S) string {
	if tags == "" {
		return string(tag)
	}
	return tags + tagSep + string(tag)
}

// splitTags is the list of tags (nil if none).
func splitTags(tags string) []string {
	if tags == "" {
		return nil
	}
	return strings.Split(tags, tagSep)
}

// sortTags is tags sorted (tags itself if they are: the index gives a
// repository's tags in order).
func sortTags(tags string) string {
	list := splitTags(tags)
	if slices.IsSorted(list) {
		return tags
	}
	slices.Sort(list)
	return strings.Join(list, tagSep)
}

func latest(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}
