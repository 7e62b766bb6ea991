package status

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Lister lists the cached images; *lifecycle.Collector is one.
type Lister interface {
	Images(ctx context.Context) ([]lifecycle.Image, error)
}

// Image is a cached image as the status page and its API show it: the
// lifecycle's view of it, with its pulls and referrers.
type Image struct {
	lifecycle.Image
	// Name is Upstream/Repo, e.g. docker.io/library/nginx.
	Name string `json:"name"`
	// Pulls counts the GETs of its manifest (since pulls are counted).
	Pulls int64 `json:"pulls"`
	// ReferrerTypes are the artifact types of its referrers, as far as
	// the mirror has served or fetched them.
	ReferrerTypes []string `json:"referrer_types,omitempty"`
	// Signed and Attested: a signature, or an attestation or SBOM, refers
	// to it (referrers, or cosign's sha256-<hex>.sig/.att/.sbom tags).
	Signed   bool `json:"signed"`
	Attested bool `json:"attested"`
}

// catalogSnapshot is the image list as built once, in the three orders
// the page offers, so that a request only filters and pages. It is kept
// for the life of the process, compactly (at 100k images an Image each
// with its strings was ~55 MiB; a row is ~100 bytes, its tags compressed
// ~20): an Image is made for the images a request shows.
type catalogSnapshot struct {
	rows []row
	// tags are the rows' tags (packedTags).
	tags packedTags
	// names are the repositories ("upstream/repo"), with their parts;
	// strs the media types and states, lists the platform lists, each
	// once.
	names, upstreams, repos []string
	strs                    []string
	lists                   [][]string
	// other are the digests that are not canonical sha256 ones (row.dg
	// then unused), refTypes the referrers' artifact types, by row.
	other    map[int32]digest.Digest
	refTypes map[int32][]string
	// The orders, as indexes of rows.
	byName, bySize, byPulled []int32
	built                    time.Time
	// gen is the index's generation it was read at.
	gen uint64
}

// row is an image of the list (see Image); its tags are in
// catalogSnapshot.tags.
type row struct {
	lastPull    time.Time
	size, pulls int64
	dg          [32]byte
	// name indexes names; media and state strs; platforms and leftOut
	// lists.
	name, manifests, blobs           int32
	media, state, platforms, leftOut int32
	pinned, signed, attested         bool
}

// tagEnd ends each tag in a row's packed tags (packTags): a tag is
// letters, digits, '_', '.' and '-'.
const tagEnd = '\x00'

// image is row i as the page and the API show it (a new Image), its tags
// read with tr.
func (s *catalogSnapshot) image(tr *tagReader, i int32) (*Image, error) {
	tags, err := tr.packed(i)
	if err != nil {
		return nil, err
	}
	r := &s.rows[i]
	im := &Image{Name: s.names[r.name], Pulls: r.pulls, ReferrerTypes: s.refTypes[i], Signed: r.signed, Attested: r.attested}
	im.Image = lifecycle.Image{
		Upstream: s.upstreams[r.name], Repo: s.repos[r.name], MediaType: s.strs[r.media], State: s.strs[r.state],
		Platforms: s.lists[r.platforms], PlatformsLeftOut: s.lists[r.leftOut],
		Size: r.size, Manifests: int(r.manifests), Blobs: int(r.blobs), LastPull: r.lastPull, Pinned: r.pinned,
	}
	if d, ok := s.other[i]; ok {
		im.Digest = d
	} else {
		im.Digest = digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(r.dg[:]))
	}
	if len(tags) > 0 {
		im.Tags = strings.Split(string(tags[:len(tags)-1]), string(tagEnd))
	}
	return im, nil
}

// images are rows as the page and the API show them.
func (s *catalogSnapshot) images(rows []int32) ([]*Image, error) {
	out := make([]*Image, len(rows))
	tr := s.tags.reader()
	for i, r := range rows {
		var err error
		if out[i], err = s.image(tr, r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// snapshotBuilder interns what rows share while a list is built.
type snapshotBuilder struct {
	s     *catalogSnapshot
	tags  *tagPacker
	names map[string]int32
	strs  map[string]int32
	lists map[string]int32
}

func newSnapshotBuilder(s *catalogSnapshot) *snapshotBuilder {
	s.strs, s.lists = []string{""}, [][]string{nil}
	return &snapshotBuilder{s: s, tags: newTagPacker(&s.tags), names: map[string]int32{}, strs: map[string]int32{"": 0}, lists: map[string]int32{"": 0}}
}

func (b *snapshotBuilder) name(im *lifecycle.Image) int32 {
	n := im.Name()
	id, ok := b.names[n]
	if !ok {
		id = int32(len(b.s.names))
		b.names[n] = id
		b.s.names, b.s.upstreams, b.s.repos = append(b.s.names, n), append(b.s.upstreams, im.Upstream), append(b.s.repos, im.Repo)
	}
	return id
}

func (b *snapshotBuilder) str(v string) int32 {
	id, ok := b.strs[v]
	if !ok {
		id = int32(len(b.s.strs))
		b.strs[v] = id
		b.s.strs = append(b.s.strs, v)
	}
	return id
}

func (b *snapshotBuilder) list(v []string) int32 {
	if len(v) == 0 {
		return 0
	}
	var key strings.Builder
	for _, p := range v {
		key.WriteString(strconv.Itoa(len(p)))
		key.WriteByte(':')
		key.WriteString(p)
	}
	id, ok := b.lists[key.String()]
	if !ok {
		id = int32(len(b.s.lists))
		b.lists[key.String()] = id
		b.s.lists = append(b.s.lists, slices.Clone(v))
	}
	return id
}

// add adds im as row i (rows are added in order).
func (b *snapshotBuilder) add(i int32, im *lifecycle.Image) *row {
	r := &b.s.rows[i]
	b.tags.add(im.Tags)
	*r = row{
		lastPull: im.LastPull, size: im.Size,
		name: b.name(im), manifests: int32(im.Manifests), blobs: int32(im.Blobs),
		media: b.str(im.MediaType), state: b.str(im.State), platforms: b.list(im.Platforms), leftOut: b.list(im.PlatformsLeftOut),
		pinned: im.Pinned,
	}
	if k, ok := storage.SHA256Key(im.Digest); ok {
		r.dg = k
	} else {
		if b.s.other == nil {
			b.s.other = map[int32]digest.Digest{}
		}
		b.s.other[i] = im.Digest
	}
	return r
}

// catalog caches the image list: building it reads the whole index (and,
// with a lifecycle collector, the manifests), so it is built at most once
// per maxAge. A request finding it stale is answered from the stale copy
// while one rebuild runs in the background.
type catalog struct {
	list   Lister
	index  *storage.Index
	maxAge time.Duration
	now    func() time.Time

	mu       sync.Mutex
	cur      *catalogSnapshot
	building chan struct{} // non-nil while a build runs; closed when it ends
	starts   int           // builds begun
	err      error         // the last build's error
	bg       sync.WaitGroup
	// bgCtx is the background builds' context (made with the first),
	// ended by stopBG at close: nobody waits for their list any more.
	bgCtx  context.Context
	stopBG context.CancelFunc
	closed bool
}

// get returns the current list: as it is while younger than maxAge or
// while the index has not changed since it was read; while younger than
// staleFor*maxAge, as it is while a rebuild runs in the background; else
// rebuilt first (nobody looked for a while, so the copy may be far off).
func (c *catalog) get(ctx context.Context) (*catalogSnapshot, error) {
	c.mu.Lock()
	cur := c.cur
	var age time.Duration
	if cur != nil {
		age = c.now().Sub(cur.built)
		if gen, err := c.index.Generation(); err == nil && gen == cur.gen {
			age = 0 // nothing changed: as good as new
		}
	}
	if cur != nil && age >= c.maxAge && age < staleFor*c.maxAge && c.building == nil && !c.closed {
		c.backgroundLocked()
	}
	c.mu.Unlock()
	if cur != nil && age < staleFor*c.maxAge {
		return cur, nil
	}
	return c.current(ctx)
}

// current returns the list of the build running, or of one begun now if
// none runs: a visitor, unlike an action (refresh), may take a build begun
// before its request, so that visitors arriving together share one.
func (c *catalog) current(ctx context.Context) (*catalogSnapshot, error) {
	c.mu.Lock()
	ch := c.building
	if ch == nil {
		ch = c.startLocked()
		c.mu.Unlock()
		c.requestBuild(ctx, ch)
	} else {
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return nil, c.err
	}
	return c.cur, nil
}

// staleFor is how many times maxAge a list is served while it is rebuilt.
const staleFor = 4

// latest returns the current list without waiting for a read (nil if it
// was never read): for figures that may lag, such as the image count. As
// get, it has a list out of date read again in the background: else the
// status, polled by scripts and by the page's refresh, would show the
// first read's figures for ever.
func (c *catalog) latest() *catalogSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.cur
	if cur != nil && c.building == nil && !c.closed && c.now().Sub(cur.built) >= c.maxAge {
		if gen, err := c.index.Generation(); err == nil && gen != cur.gen {
			c.backgroundLocked()
		}
	}
	return cur
}

// refresh builds the list now and returns it: after an action, the page
// must show its effect. A build already running began before the call,
// maybe before the action: refresh waits for it and builds again (one
// build begun meanwhile, by another caller, will do).
func (c *catalog) refresh(ctx context.Context) (*catalogSnapshot, error) {
	c.mu.Lock()
	before := c.starts
	for {
		ch := c.building
		if ch == nil {
			ch = c.startLocked()
			c.mu.Unlock()
			c.requestBuild(ctx, ch)
			break
		}
		fresh := c.starts > before // the running build began after the call
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if fresh {
			break
		}
		c.mu.Lock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return nil, c.err
	}
	return c.cur, nil
}

// backgroundLocked begins a build in the background, which close ends.
func (c *catalog) backgroundLocked() {
	if c.bgCtx == nil {
		c.bgCtx, c.stopBG = context.WithCancel(context.Background())
	}
	ch, ctx := c.startLocked(), c.bgCtx
	c.bg.Go(func() { c.build(ctx, ch) })
}

func (c *catalog) startLocked() chan struct{} {
	ch := make(chan struct{})
	c.building = ch
	c.starts++
	return ch
}

// build builds the list and publishes it; ch is closed when done. A
// request's build runs without its cancellation (requestBuild); a
// background one ends at close.
func (c *catalog) build(ctx context.Context, ch chan struct{}) {
	snap, err := c.load(ctx)
	c.mu.Lock()
	if err == nil {
		c.cur = snap
	}
	c.err = err
	c.building = nil
	c.mu.Unlock()
	close(ch)
}

// requestBuild is build for a request, without ctx's cancellation: others
// wait for the same build, and the caller whose request began it leaving
// must not fail theirs.
func (c *catalog) requestBuild(ctx context.Context, ch chan struct{}) {
	c.build(context.WithoutCancel(ctx), ch)
}

// close ends a background build and waits for it; none starts
// afterwards. It does not wait for the build to read the whole list
// (minutes on a large S3 store) when the server shuts down.
func (c *catalog) close() {
	c.mu.Lock()
	c.closed = true
	if c.stopBG != nil {
		c.stopBG()
	}
	c.mu.Unlock()
	c.bg.Wait()
}

// load reads the images, their pull counts and referrers, and sorts them.
func (c *catalog) load(ctx context.Context) (*catalogSnapshot, error) {
	built := c.now()
	gen, err := c.index.Generation() // before reading: a write meanwhile makes it stale
	if err != nil {
		return nil, err
	}
	n, each, err := c.images(ctx)
	if err != nil {
		return nil, err
	}
	pulls, err := c.index.Pulls()
	if err != nil {
		return nil, err
	}
	refs, err := c.index.ReferrerTypes()
	if err != nil {
		return nil, err
	}
	// cosign's tag scheme: sha256-<hex>.sig (.att, .sbom) in the same
	// repository names the signed digest. Only such tags are kept here:
	// at 100k images a map of every tag (1M) was ~60 MiB.
	type key struct{ upstream, repo, tag string }
	tags := map[key]bool{}
	if err := each(func(im *lifecycle.Image) {
		for _, t := range im.Tags {
			if cosignSuffix(t) {
				tags[key{im.Upstream, im.Repo, t}] = true
			}
		}
	}); err != nil {
		return nil, err
	}
	s := &catalogSnapshot{built: built, gen: gen, rows: make([]row, 0, n)}
	b := newSnapshotBuilder(s)
	err = each(func(im *lifecycle.Image) {
		i := int32(len(s.rows))
		s.rows = append(s.rows, row{})
		r := b.add(i, im)
		r.pulls = pulls[im.Digest]
		if rt := refs[im.Name()+"@"+im.Digest.String()]; len(rt) > 0 {
			if s.refTypes == nil {
				s.refTypes = map[int32][]string{}
			}
			s.refTypes[i] = rt
			for _, t := range rt {
				r.signed = r.signed || isSignature(t)
				r.attested = r.attested || isAttestation(t)
			}
		}
		if cosign := cosignTag(im.Digest); cosign != "" {
			r.signed = r.signed || tags[key{im.Upstream, im.Repo, cosign + ".sig"}]
			r.attested = r.attested || tags[key{im.Upstream, im.Repo, cosign + ".att"}] || tags[key{im.Upstream, im.Repo, cosign + ".sbom"}]
		}
	})
	if err == nil {
		err = b.tags.done()
	}
	if err != nil {
		return nil, err
	}
	s.rows = slices.Clip(s.rows)
	s.byName = make([]int32, len(s.rows))
	for i := range s.byName {
		s.byName[i] = int32(i)
	}
	// Listers order by name, tags and digest; repository needs the name order.
	slices.SortStableFunc(s.byName, func(a, b int32) int { return cmp.Compare(s.names[s.rows[a].name], s.names[s.rows[b].name]) })
	s.bySize = slices.Clone(s.byName)
	slices.SortStableFunc(s.bySize, func(a, b int32) int { return cmp.Compare(s.rows[b].size, s.rows[a].size) })
	s.byPulled = slices.Clone(s.byName)
	slices.SortStableFunc(s.byPulled, func(a, b int32) int { return s.rows[b].lastPull.Compare(s.rows[a].lastPull) })
	return s, nil
}

// imageLister is a Lister that can also give its images one at a time
// (lifecycle.Collector): the list is then built without all of them as
// Images at once.
type imageLister interface {
	ListImages(ctx context.Context) (*lifecycle.ImageList, error)
}

// images lists the images: their number, and a function that calls fn
// with each in order, as often as it is called.
func (c *catalog) images(ctx context.Context) (int, func(fn func(*lifecycle.Image)) error, error) {
	if l, ok := c.list.(imageLister); ok {
		list, err := l.ListImages(ctx)
		if err != nil {
			return 0, nil, err
		}
		return list.Len(), func(fn func(*lifecycle.Image)) error {
			return list.Each(func(im lifecycle.Image) error {
				fn(&im)
				return nil
			})
		}, nil
	}
	images, err := c.list.Images(ctx)
	if err != nil {
		return 0, nil, err
	}
	return len(images), func(fn func(*lifecycle.Image)) error {
		for i := range images {
			fn(&images[i])
		}
		return nil
	}, nil
}

// packTags joins tags into one string, each followed by tagEnd: how a
// row's tags read back (kept front-coded: packedTags).
func packTags(tags []string) string {
	n := 0
	for _, t := range tags {
		n += len(t) + 1
	}
	var b strings.Builder
	b.Grow(n)
	for _, t := range tags {
		b.WriteString(t)
		b.WriteByte(tagEnd)
	}
	return b.String()
}

// cosignSuffix reports whether a tag may be one of cosign's (what
// cosignTag makes, with .sig, .att or .sbom).
func cosignSuffix(tag string) bool {
	return strings.HasSuffix(tag, ".sig") || strings.HasSuffix(tag, ".att") || strings.HasSuffix(tag, ".sbom")
}

func cosignTag(d digest.Digest) string {
	if !oci.ValidDigest(d) {
		return ""
	}
	return d.Algorithm().String() + "-" + d.Encoded()
}

// isSignature tells a signature's artifact type (cosign, Notary).
func isSignature(t string) bool {
	return strings.Contains(t, "cosign.artifact.sig") || strings.Contains(t, "notary.signature") || strings.Contains(t, "sigstore.bundle")
}

// isAttestation tells an attestation's or SBOM's artifact type.
func isAttestation(t string) bool {
	return strings.Contains(t, "in-toto") || strings.Contains(t, "spdx") || strings.Contains(t, "cyclonedx") ||
		strings.Contains(t, "cosign.artifact.att") || strings.Contains(t, "sbom")
}

// Sort orders of the image list.
const (
	SortName   = "name"
	SortSize   = "size"
	SortPulled = "pulled"
)

// Page is one page of the filtered image list.
type Page struct {
	// Total counts the images matching the filter; Pages the pages.
	Total  int      `json:"total"`
	Page   int      `json:"page"`
	Pages  int      `json:"pages"`
	N      int      `json:"n"`
	Query  string   `json:"q"`
	Sort   string   `json:"sort"`
	Images []*Image `json:"images"`
}

// page filters the list by q (a case-insensitive substring of the name or
// a tag), in the order sort names, and cuts page (1-based) of n.
func (s *catalogSnapshot) page(q, sort string, page, n int) (Page, error) {
	order := s.byName
	switch sort {
	case SortSize:
		order = s.bySize
	case SortPulled:
		order = s.byPulled
	default:
		sort = SortName
	}
	q = strings.TrimSpace(q)
	lq := strings.ToLower(q)
	out := Page{Query: q, Sort: sort, N: n}
	skip := math.MaxInt // a page so far that its start overflows: none shown
	if page-1 <= math.MaxInt/n {
		skip = (page - 1) * n
	}
	var hits []bool
	if lq != "" {
		var err error
		if hits, err = s.matching(lq); err != nil {
			return Page{}, err
		}
	}
	var shown []int32
	for _, i := range order {
		if hits != nil && !hits[i] {
			continue
		}
		if out.Total >= skip && len(shown) < n {
			shown = append(shown, i)
		}
		out.Total++
	}
	var err error
	if out.Images, err = s.images(shown); err != nil {
		return Page{}, err
	}
	out.Pages = max(1, (out.Total+n-1)/n)
	out.Page = page
	return out, nil
}

// matching tells, by row, whether lq (lower-cased) is in the row's name
// and tags, space-separated and lower-cased. The rows are read in order:
// each tag block is decoded once. Name and tags are joined in a buffer,
// not kept: at 100k images a kept copy per image is ~15 MiB, for a filter
// typed now and then.
func (s *catalogSnapshot) matching(lq string) ([]bool, error) {
	hits := make([]bool, len(s.rows))
	tr := s.tags.reader()
	var buf []byte
	for i := range s.rows {
		tags, err := tr.packed(int32(i))
		if err != nil {
			return nil, err
		}
		hits[i] = matches(&buf, s.names[s.rows[i].name], tags, lq)
	}
	return hits, nil
}

// matches reports whether lq (lower-cased) is in name and the packed
// tags (see packTags), space-separated and lower-cased.
func matches(buf *[]byte, name string, tags []byte, lq string) bool {
	b := append(append((*buf)[:0], name...), ' ')
	b = append(b, bytes.TrimSuffix(tags, []byte{tagEnd})...)
	*buf = b
	for i, c := range b[len(name)+1:] {
		if c == tagEnd {
			b[len(name)+1+i] = ' '
		}
	}
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return strings.Contains(strings.ToLower(string(b)), lq)
		}
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return bytes.Contains(b, []byte(lq))
}

// repository returns the images of one repository ("host/repo").
func (s *catalogSnapshot) repository(name string) ([]*Image, error) {
	var rows []int32
	i, _ := slices.BinarySearchFunc(s.byName, name, func(r int32, name string) int { return cmp.Compare(s.names[s.rows[r].name], name) })
	for ; i < len(s.byName) && s.names[s.rows[s.byName[i]].name] == name; i++ {
		rows = append(rows, s.byName[i])
	}
	return s.images(rows)
}
